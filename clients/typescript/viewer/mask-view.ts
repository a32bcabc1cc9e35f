// The mask groups of one annotation, and a group's slices as images straight from
// storage (presigned GET URLs; storage answers CORS for this page's origin). Each group
// shows its review state, with the review steps open from it.
import {
  MaskGroupStatus,
  PacsStoreStatus,
  type Annotation,
  type DownloadUrl,
  type Mask,
  type MaskGroup,
  type MaskGroupExport,
  type Review,
  type PacsClient,
} from "../src/index.js";
import { describeError, element, formatTime, isAbort } from "./dom.js";
import { ReviewControls, reviewStateName, type ReviewSteps } from "./review-view.js";

const PAGE_SIZE = 100;
const CALL = { timeoutMs: 15_000 } as const;

export interface MaskViewHooks {
  readonly section: HTMLElement;
  readonly title: HTMLElement;
  readonly groups: HTMLUListElement;
  readonly slices: HTMLElement;
  /** Where a group's DICOM SEG exports are listed, each with its download link. */
  readonly exports: { readonly section: HTMLElement; readonly title: HTMLElement; readonly list: HTMLUListElement };
  readonly report: (message: string, isError?: boolean) => void;
}

/** A listed group: its row, and its review controls, which keep a typed comment. */
interface GroupItem {
  group: MaskGroup;
  readonly row: HTMLLIElement;
  readonly controls: ReviewControls;
}

export class MaskView {
  private loading = new AbortController();
  private readonly items = new Map<bigint, GroupItem>();

  constructor(
    private readonly client: PacsClient,
    private readonly hooks: MaskViewHooks,
  ) {}

  close(): void {
    this.restart();
    this.hooks.section.hidden = true;
    this.hooks.groups.replaceChildren();
    this.items.clear();
    this.hooks.slices.replaceChildren();
    this.hooks.exports.section.hidden = true;
    this.hooks.exports.list.replaceChildren();
  }

  async open(annotation: Annotation): Promise<void> {
    this.close();
    const signal = this.loading.signal;
    this.hooks.section.hidden = false;
    this.hooks.title.textContent = `#${annotation.id}`;
    try {
      const groups: MaskGroup[] = [];
      let pageToken = "";
      do {
        const page = await this.client.masks.listMaskGroups(
          { annotationId: annotation.id, pageSize: PAGE_SIZE, pageToken },
          { signal, timeoutMs: 15_000 },
        );
        groups.push(...page.maskGroups);
        pageToken = page.nextPageToken;
      } while (pageToken);
      this.hooks.groups.replaceChildren(...groups.map((group) => this.groupItem(group).row));
      if (groups.length === 0) this.hooks.report(`annotation #${annotation.id} has no mask groups`);
    } catch (error) {
      if (!isAbort(error)) this.hooks.report(`mask groups: ${describeError(error)}`, true);
    }
  }

  /** A group's review changed (an event from the study's watch): shown if the group is listed. */
  reviewed(groupId: bigint, review: Review | undefined): void {
    const item = this.items.get(groupId);
    if (item) this.showGroup({ ...item.group, review });
  }

  private groupItem(group: MaskGroup): GroupItem {
    const row = element("li", { className: "mask-group-item", data: { groupId: String(group.id) } });
    const item: GroupItem = { group, row, controls: new ReviewControls(this.groupSteps(group), this.hooks.report) };
    this.items.set(group.id, item);
    this.showGroup(group);
    return item;
  }

  private showGroup(group: MaskGroup): void {
    const item = this.items.get(group.id);
    if (!item) return;
    item.group = group;
    item.controls.render(group.review);
    item.row.dataset["reviewState"] = reviewStateName(group.review);
    item.row.replaceChildren(this.groupButton(group), item.controls.root);
  }

  private groupSteps(group: MaskGroup): ReviewSteps {
    const ids = { annotationId: group.annotationId, groupId: group.id };
    const done = (reviewed: MaskGroup | undefined, what: string): void => {
      if (!reviewed) return;
      this.showGroup(reviewed);
      this.hooks.report(`mask group ${reviewed.groupName || reviewed.id} ${what}`);
    };
    return {
      submit: async () => done((await this.client.masks.submitMaskGroupForReview(ids, CALL)).maskGroup, "submitted for review"),
      approve: async () => done((await this.client.masks.approveMaskGroup(ids, CALL)).maskGroup, "approved"),
      reject: async (comment) => done((await this.client.masks.rejectMaskGroup({ ...ids, comment }, CALL)).maskGroup, "rejected"),
    };
  }

  /** Abandons whatever is loading; returns the signal for what loads next. */
  private restart(): AbortSignal {
    this.loading.abort();
    this.loading = new AbortController();
    return this.loading.signal;
  }

  private groupButton(group: MaskGroup): HTMLButtonElement {
    const status = group.status === MaskGroupStatus.COMPLETE ? "complete" : "pending";
    const label = `${group.groupName || `group ${group.id}`} (${status}, ${group.completedSlices}/${group.sliceCount} slices)`;
    const button = element("button", {
      className: "mask-group",
      text: label,
      data: { groupId: String(group.id) },
    });
    button.type = "button";
    button.addEventListener("click", () => {
      const signal = this.restart();
      void this.showExports(group, signal);
      void this.showSlices(group, signal);
    });
    return button;
  }

  /** The group's SEG exports, newest first, each linked to a fresh signed URL of its .dcm. */
  private async showExports(group: MaskGroup, signal: AbortSignal): Promise<void> {
    const { section, title, list } = this.hooks.exports;
    section.hidden = false;
    title.textContent = group.groupName || `group ${group.id}`;
    list.replaceChildren(element("li", { className: "exports-loading", text: "loading…" }));
    try {
      const rows: HTMLLIElement[] = [];
      let pageToken = "";
      do {
        const page = await this.client.masks.listMaskGroupExports(
          { annotationId: group.annotationId, groupId: group.id, pageSize: PAGE_SIZE, pageToken },
          { signal, timeoutMs: 15_000 },
        );
        const urls = new Map(page.downloadUrls.map((link) => [link.exportId, link.url]));
        rows.push(...page.maskGroupExports.map((record) => exportRow(record, urls.get(record.id))));
        pageToken = page.nextPageToken;
      } while (pageToken && !signal.aborted);
      if (signal.aborted) return;
      list.replaceChildren(
        ...(rows.length > 0 ? rows : [element("li", { className: "no-exports", text: "not exported yet" })]),
      );
    } catch (error) {
      // Shown beside the list: the slices below may still load.
      if (!isAbort(error)) {
        list.replaceChildren(element("li", { className: "exports-error", text: `exports: ${describeError(error)}` }));
      }
    }
  }

  /** Lists the recorded masks page by page and shows each page as it is signed. */
  private async showSlices(group: MaskGroup, signal: AbortSignal): Promise<void> {
    this.hooks.slices.replaceChildren();
    try {
      let pageToken = "";
      do {
        const page = await this.client.masks.listMasks(
          { annotationId: group.annotationId, groupId: group.id, pageSize: PAGE_SIZE, pageToken },
          { signal, timeoutMs: 15_000 },
        );
        pageToken = page.nextPageToken;
        if (page.masks.length === 0) continue;
        const signed = await this.client.masks.createDownloadUrls(
          { annotationId: group.annotationId, groupId: group.id, maskIds: page.masks.map((m) => m.id) },
          { signal, timeoutMs: 15_000 },
        );
        const byId = new Map(page.masks.map((mask) => [mask.id, mask]));
        for (const link of signed.urls) this.hooks.slices.append(slice(link, byId.get(link.maskId)));
      } while (pageToken && !signal.aborted);
    } catch (error) {
      if (!isAbort(error)) this.hooks.report(`slices: ${describeError(error)}`, true);
    }
  }
}

const PACS_STATUS: Record<PacsStoreStatus, string> = {
  [PacsStoreStatus.UNSPECIFIED]: "",
  [PacsStoreStatus.NOT_REQUESTED]: "not sent to the PACS",
  [PacsStoreStatus.STORED]: "stored in the PACS",
  [PacsStoreStatus.FAILED]: "PACS refused",
};

function exportRow(record: MaskGroupExport, url: string | undefined): HTMLLIElement {
  const size = `${(Number(record.sizeBytes) / 1024).toFixed(1)} KiB`;
  const failure = record.pacsStatus === PacsStoreStatus.FAILED && record.pacsFailureReason ? `: ${record.pacsFailureReason}` : "";
  const details = [
    formatTime(record.createdAt?.seconds),
    `${record.segmentCount} segment(s)`,
    size,
    PACS_STATUS[record.pacsStatus] + failure,
  ].filter(Boolean);
  const name = `SEG export #${record.id}`;
  const label: HTMLElement = url ? element("a", { className: "export-download", text: name }) : element("span", { text: name });
  if (label instanceof HTMLAnchorElement && url) {
    label.href = url;
    // The file name the browser saves it under: ids only, like the server's object keys.
    label.download = `seg-group${record.maskGroupId}-export${record.id}.dcm`;
  }
  return element(
    "li",
    { className: "mask-export", data: { exportId: String(record.id) } },
    label,
    element("span", { className: "export-details", text: ` · ${details.join(" · ")}` }),
  );
}

function slice(link: DownloadUrl, mask: Mask | undefined): HTMLElement {
  const image = element("img", { className: "mask-slice", data: { sliceIndex: String(link.sliceIndex) } });
  // A CORS request: the pixels are readable (canvas, fetch) only because storage
  // allows this origin, and a missing CORS rule shows up here as a failed load.
  image.crossOrigin = "anonymous";
  image.alt = `slice ${link.sliceIndex}`;
  const size = mask ? ` · ${mask.width}×${mask.height}` : "";
  const caption = element("figcaption", { text: `slice ${link.sliceIndex}${size}` });
  const figure = element("figure", { className: "slice", data: { sliceIndex: String(link.sliceIndex) } }, image, caption);
  image.addEventListener("error", () => {
    figure.classList.add("failed");
    caption.textContent = `slice ${link.sliceIndex}: could not load`;
  });
  image.src = link.url;
  return figure;
}
