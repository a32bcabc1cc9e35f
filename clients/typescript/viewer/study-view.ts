// One study's annotations, listed once and kept current by WatchAnnotations.
import {
  AnnotationEventType,
  type Annotation,
  type PacsClient,
  type Review,
  type WatchAnnotationsResponse,
} from "../src/index.js";
import { describeError, element, formatTime, isAbort, pause } from "./dom.js";
import { AnnotationReview, reviewStateName } from "./review-view.js";

const PAGE_SIZE = 200;
// Enough for a study's annotations; beyond it the list says it is cut short.
const MAX_LISTED = 2000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10_000;

export interface StudyViewHooks {
  readonly list: HTMLUListElement;
  readonly badge: HTMLElement;
  readonly openMasks: (annotation: Annotation) => void;
  /** An annotation this page changed (a review step, a restore): the queue may have moved. */
  readonly changed: (annotation: Annotation) => void;
  /** One of the study's mask groups was submitted, approved or rejected. */
  readonly groupReviewed: (annotationId: bigint, groupId: bigint, review: Review | undefined) => void;
  readonly report: (message: string, isError?: boolean) => void;
}

export class StudyView {
  private readonly shown = new Map<bigint, Annotation>();
  // Ids are never reused: a deletion seen as an event beats a list read before it.
  private readonly deleted = new Set<bigint>();
  // Annotations that arrived after the first listing, highlighted.
  private readonly freshIds = new Set<bigint>();
  // Kept across renders: an open history and a typed rejection comment stay put.
  private readonly reviews = new Map<bigint, AnnotationReview>();
  private readonly stopped = new AbortController();
  private lastEventId = 0n;
  private truncated = false;

  constructor(
    private readonly client: PacsClient,
    readonly projectId: bigint,
    readonly studyUid: string,
    private readonly hooks: StudyViewHooks,
  ) {}

  /**
   * Starts watching before listing, as the API advises. The server does not confirm
   * that a subscription is live, so a change in the moment before it is can still be
   * missed; a reload lists it.
   */
  start(): void {
    this.setBadge("connecting", "");
    void this.watch();
    void this.list();
  }

  stop(): void {
    this.stopped.abort();
  }

  /** Shows an annotation this page wrote, without waiting for its event. */
  show(annotation: Annotation): void {
    if (annotation.projectId !== this.projectId || annotation.studyUid !== this.studyUid) return;
    this.upsert(annotation, true);
    this.render();
  }

  private async watch(): Promise<void> {
    const signal = this.stopped.signal;
    let retryMs = FIRST_RETRY_MS;
    while (!signal.aborted) {
      const resumed = this.lastEventId;
      try {
        const events = this.client.annotations.watchAnnotations(
          { projectId: this.projectId, studyUid: this.studyUid, afterEventId: resumed },
          { signal },
        );
        this.setBadge("live", "live");
        for await (const event of events) {
          retryMs = FIRST_RETRY_MS;
          this.apply(event);
        }
      } catch (error) {
        if (signal.aborted || isAbort(error)) return;
        this.setBadge("reconnecting", "down");
        this.hooks.report(`watch interrupted (${describeError(error)}); resuming`, true);
      }
      await pause(retryMs, signal);
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
      // Resuming from an event id replays what was missed; with none seen yet
      // there is nothing to resume from, so read the list again instead.
      if (this.lastEventId === 0n && !signal.aborted) void this.list();
    }
  }

  private async list(): Promise<void> {
    const signal = this.stopped.signal;
    let pageToken = "";
    let listed = 0;
    try {
      do {
        const page = await this.client.annotations.listAnnotations(
          { projectId: this.projectId, studyUid: this.studyUid, pageSize: PAGE_SIZE, pageToken },
          { signal, timeoutMs: 15_000 },
        );
        for (const annotation of page.annotations) this.upsert(annotation, false);
        listed += page.annotations.length;
        pageToken = page.nextPageToken;
        this.truncated = pageToken !== "" && listed >= MAX_LISTED;
        this.render();
      } while (pageToken && !this.truncated);
      this.hooks.list.dataset["loaded"] = "true";
    } catch (error) {
      if (!isAbort(error)) this.hooks.report(`listing failed: ${describeError(error)}`, true);
    }
  }

  private apply(event: WatchAnnotationsResponse): void {
    this.lastEventId = event.eventId > this.lastEventId ? event.eventId : this.lastEventId;
    if (event.eventType === AnnotationEventType.DELETED) {
      this.deleted.add(event.annotationId);
      this.shown.delete(event.annotationId);
      this.reviews.delete(event.annotationId);
    } else if (event.eventType === AnnotationEventType.MASK_GROUP_REVIEWED) {
      // Names the group; the annotation itself did not change.
      this.hooks.groupReviewed(event.annotationId, event.maskGroupId, event.maskGroupReview);
      return;
    } else if (event.annotation) {
      // Back from the trash: the deletion no longer holds.
      if (event.eventType === AnnotationEventType.RESTORED) this.deleted.delete(event.annotationId);
      this.upsert(event.annotation, true);
    }
    this.render();
  }

  private upsert(annotation: Annotation, fresh: boolean): void {
    if (this.deleted.has(annotation.id)) return;
    const known = this.shown.get(annotation.id);
    // Events and list pages may arrive in any order: the latest version wins.
    if (known && version(known) > version(annotation)) return;
    this.shown.set(annotation.id, annotation);
    if (fresh) this.freshIds.add(annotation.id);
  }

  private render(): void {
    const newestFirst = [...this.shown.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    const items = newestFirst.map((annotation) => this.item(annotation));
    if (this.truncated) {
      items.push(element("li", { className: "meta", text: `only the newest ${MAX_LISTED} are listed` }));
    }
    this.hooks.list.replaceChildren(...items);
    this.hooks.list.dataset["count"] = String(this.shown.size);
  }

  private item(annotation: Annotation): HTMLLIElement {
    const masks = element("button", { className: "open-masks", text: "Masks" });
    masks.type = "button";
    masks.addEventListener("click", () => this.hooks.openMasks(annotation));
    const where = annotation.seriesUid ? `series ${annotation.seriesUid}` : "whole study";
    const meta = `user ${annotation.userId} · ${where} · ${formatTime(annotation.createdAt?.seconds)}`;
    const head = element(
      "div",
      { className: "annotation-head" },
      element("span", { className: "annotation-id", text: `#${annotation.id}` }),
      element("span", { className: "annotation-type", text: annotation.annotationType }),
      element("span", { className: "meta", text: meta }),
      masks,
    );
    let review = this.reviews.get(annotation.id);
    if (review) {
      review.update(annotation);
    } else {
      review = new AnnotationReview(this.client, annotation, {
        changed: (changed) => {
          this.show(changed);
          this.hooks.changed(changed);
        },
        report: this.hooks.report,
      });
      this.reviews.set(annotation.id, review);
    }
    const data = element("code", {
      className: "annotation-data",
      text: JSON.stringify(annotation.annotationData ?? {}).slice(0, 300),
    });
    return element(
      "li",
      {
        className: this.freshIds.has(annotation.id) ? "annotation fresh" : "annotation",
        data: {
          annotationId: String(annotation.id),
          revision: String(annotation.revision),
          reviewState: reviewStateName(annotation.review),
        },
      },
      head,
      data,
      review.root,
    );
  }

  private setBadge(text: string, state: string): void {
    this.hooks.badge.textContent = text;
    this.hooks.badge.className = state ? `badge ${state}` : "badge";
  }
}

/** Orders an annotation's versions: every write, review steps too, is a new revision. */
function version(annotation: Annotation): bigint {
  return annotation.revision;
}
