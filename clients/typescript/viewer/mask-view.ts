// The mask groups of one annotation, and a group's slices as images straight from
// storage (presigned GET URLs; storage answers CORS for this page's origin).
import {
  MaskGroupStatus,
  type Annotation,
  type DownloadUrl,
  type Mask,
  type MaskGroup,
  type PacsClient,
} from "../src/index.js";
import { describeError, element, isAbort } from "./dom.js";

const PAGE_SIZE = 100;

export interface MaskViewHooks {
  readonly section: HTMLElement;
  readonly title: HTMLElement;
  readonly groups: HTMLUListElement;
  readonly slices: HTMLElement;
  readonly report: (message: string, isError?: boolean) => void;
}

export class MaskView {
  private loading = new AbortController();

  constructor(
    private readonly client: PacsClient,
    private readonly hooks: MaskViewHooks,
  ) {}

  close(): void {
    this.restart();
    this.hooks.section.hidden = true;
    this.hooks.groups.replaceChildren();
    this.hooks.slices.replaceChildren();
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
      this.hooks.groups.replaceChildren(
        ...groups.map((group) => element("li", {}, this.groupButton(group))),
      );
      if (groups.length === 0) this.hooks.report(`annotation #${annotation.id} has no mask groups`);
    } catch (error) {
      if (!isAbort(error)) this.hooks.report(`mask groups: ${describeError(error)}`, true);
    }
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
    button.addEventListener("click", () => void this.showSlices(group));
    return button;
  }

  /** Lists the recorded masks page by page and shows each page as it is signed. */
  private async showSlices(group: MaskGroup): Promise<void> {
    const signal = this.restart();
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
