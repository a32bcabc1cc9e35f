// The review step on the page: each item's review state with its Submit, Approve and
// Reject buttons, an annotation's history with Restore, and the project's review queue.
// The page offers every step the state allows and leaves who may take it to the server
// (roles, nobody approving their own work, frozen approvals); a refusal goes to the status line.
import {
  AnnotationRevisionAction,
  ReviewState,
  type Annotation,
  type AnnotationRevision,
  type PacsClient,
  type Review,
} from "../src/index.js";
import { describeError, element, formatTime, isAbort } from "./dom.js";

export type Report = (message: string, isError?: boolean) => void;

const CALL = { timeoutMs: 15_000 } as const;
// One page of history: enough to restore from; older revisions are said to exist.
const HISTORY_PAGE = 100;
const QUEUE_PAGE = 100;
const MAX_QUEUED = 500;

/** The state's name, as badges and data-review-state show it. */
export function reviewStateName(review: Review | undefined): string {
  const state = review?.state ?? ReviewState.UNSPECIFIED;
  // Content starts as a draft; a server from before the review step sends no review.
  return state === ReviewState.UNSPECIFIED ? "draft" : ReviewState[state].toLowerCase();
}

/** What each step calls; the controls report a step's failure. */
export interface ReviewSteps {
  readonly submit: () => Promise<void>;
  readonly approve: () => Promise<void>;
  readonly reject: (comment: string) => Promise<void>;
}

/**
 * A review badge (with a rejection's comment, and "frozen" once approved) and the buttons of
 * the steps open from its state. The comment box survives re-rendering, so what a reviewer
 * types is not lost when an event redraws the list.
 */
export class ReviewControls {
  readonly root = element("span", { className: "review" });
  private readonly comment = element("input", { className: "reject-comment" });

  constructor(
    private readonly steps: ReviewSteps,
    private readonly report: Report,
  ) {
    this.comment.placeholder = "why reject (required to reject)";
    this.comment.maxLength = 2000;
  }

  render(review: Review | undefined): void {
    const name = reviewStateName(review);
    const state = review?.state ?? ReviewState.DRAFT;
    const parts: HTMLElement[] = [element("span", { className: `badge review-state ${name}`, text: name })];
    if (state === ReviewState.REJECTED && review?.comment) {
      parts.push(element("span", { className: "review-comment", text: `“${review.comment}”` }));
    }
    if (state === ReviewState.APPROVED) {
      const frozen = element("span", { className: "badge frozen", text: "frozen" });
      frozen.title = "approved: the server refuses changes and restores";
      parts.push(frozen);
    }
    if (state === ReviewState.DRAFT || state === ReviewState.UNSPECIFIED || state === ReviewState.REJECTED) {
      parts.push(this.button("Submit", "submit-review", () => this.steps.submit()));
    }
    if (state === ReviewState.SUBMITTED) {
      parts.push(
        this.button("Approve", "approve", () => this.steps.approve()),
        this.comment,
        this.button("Reject", "reject", async () => {
          await this.steps.reject(this.comment.value);
          this.comment.value = "";
        }),
      );
    }
    this.root.dataset["reviewState"] = name;
    this.root.replaceChildren(...parts);
  }

  private button(text: string, className: string, step: () => Promise<void>): HTMLButtonElement {
    return actionButton(text, className, step, this.report);
  }
}

/** A button that runs `action` once at a time, reporting its failure on the status line. */
export function actionButton(
  text: string,
  className: string,
  action: () => Promise<void>,
  report: Report,
): HTMLButtonElement {
  const button = element("button", { className, text });
  button.type = "button";
  button.addEventListener("click", () => {
    button.disabled = true;
    action()
      .catch((error: unknown) => report(describeError(error), true))
      .finally(() => {
        button.disabled = false;
      });
  });
  return button;
}

/** The review steps of an annotation, each sent with its etag as last seen (`current`). */
export function annotationSteps(
  client: PacsClient,
  current: () => Annotation,
  changed: (annotation: Annotation) => void,
  report: Report,
): ReviewSteps {
  const done = (annotation: Annotation | undefined, what: string): void => {
    if (!annotation) return;
    changed(annotation);
    report(`annotation #${annotation.id} ${what}`);
  };
  return {
    submit: async () => {
      const { id, etag } = current();
      const reply = await client.annotations.submitAnnotationForReview({ annotationId: id, etag }, CALL);
      done(reply.annotation, "submitted for review");
    },
    approve: async () => {
      const { id, etag } = current();
      const reply = await client.annotations.approveAnnotation({ annotationId: id, etag }, CALL);
      done(reply.annotation, "approved");
    },
    reject: async (comment) => {
      const { id, etag } = current();
      const reply = await client.annotations.rejectAnnotation({ annotationId: id, etag, comment }, CALL);
      done(reply.annotation, "rejected");
    },
  };
}

export interface AnnotationReviewHooks {
  readonly changed: (annotation: Annotation) => void;
  readonly report: Report;
}

/** An annotation's review controls and its History: the revisions, each older one restorable. */
export class AnnotationReview {
  readonly root: HTMLElement;
  private readonly controls: ReviewControls;
  private readonly history = element("ol", { className: "history" });
  private loadedRevision = -1n;
  private loads = 0;

  constructor(
    private readonly client: PacsClient,
    private annotation: Annotation,
    private readonly hooks: AnnotationReviewHooks,
  ) {
    this.controls = new ReviewControls(
      annotationSteps(client, () => this.annotation, hooks.changed, hooks.report),
      hooks.report,
    );
    this.history.hidden = true;
    const toggle = actionButton("History", "show-history", () => this.toggleHistory(), hooks.report);
    this.root = element("div", { className: "annotation-review" }, this.controls.root, toggle, this.history);
    this.update(annotation);
  }

  /** Shows the annotation as it is now; an open history is read again when it changed. */
  update(annotation: Annotation): void {
    this.annotation = annotation;
    this.controls.render(annotation.review);
    if (!this.history.hidden && annotation.revision !== this.loadedRevision) void this.loadHistory();
  }

  private async toggleHistory(): Promise<void> {
    this.history.hidden = !this.history.hidden;
    if (!this.history.hidden) await this.loadHistory();
  }

  private async loadHistory(): Promise<void> {
    const load = ++this.loads;
    const revision = this.annotation.revision;
    try {
      const page = await this.client.annotations.listAnnotationRevisions(
        { annotationId: this.annotation.id, pageSize: HISTORY_PAGE },
        CALL,
      );
      if (load !== this.loads) return; // a later load answers for a later revision
      const rows = page.revisions.map((entry) => this.revisionRow(entry));
      if (page.nextPageToken) rows.push(element("li", { className: "meta", text: "older revisions not shown" }));
      this.history.replaceChildren(...rows);
      this.loadedRevision = revision;
      this.history.dataset["revision"] = String(revision);
    } catch (error) {
      if (load === this.loads && !isAbort(error)) this.hooks.report(`history: ${describeError(error)}`, true);
    }
  }

  private revisionRow(entry: AnnotationRevision): HTMLLIElement {
    const action = AnnotationRevisionAction[entry.action]?.toLowerCase() ?? String(entry.action);
    // The state the write left; a review step's action already names it.
    const state = entry.reviewState ? ReviewState[entry.reviewState].toLowerCase() : "";
    const details = [
      `r${entry.revision}`,
      entry.restoredFromRevision ? `${action} from r${entry.restoredFromRevision}` : action,
      state === action ? "" : state,
      entry.userId ? `user ${entry.userId}` : "user unknown",
      formatTime(entry.createdAt?.seconds),
      entry.changedFields.join(", "),
    ].filter(Boolean);
    const row = element(
      "li",
      { className: "revision", data: { revision: String(entry.revision), action } },
      element("span", { className: "revision-details", text: details.join(" · ") }),
    );
    if (entry.revision < this.annotation.revision) {
      row.append(actionButton("Restore", "restore-revision", () => this.restore(entry.revision), this.hooks.report));
    }
    return row;
  }

  private async restore(revision: bigint): Promise<void> {
    const { id, etag } = this.annotation;
    const reply = await this.client.annotations.restoreAnnotationRevision({ annotationId: id, revision, etag }, CALL);
    if (!reply.annotation) return;
    this.hooks.changed(reply.annotation);
    this.hooks.report(`annotation #${id}: revision ${revision} restored as revision ${reply.annotation.revision}`);
  }
}

export interface ReviewQueueHooks {
  readonly section: HTMLElement;
  readonly list: HTMLUListElement;
  readonly openStudy: (studyUid: string) => void;
  readonly changed: (annotation: Annotation) => void;
  readonly report: Report;
}

/** The project's annotations waiting for review (SUBMITTED), each with Approve and Reject. */
export class ReviewQueue {
  private projectId: bigint | undefined;
  private loading = new AbortController();

  constructor(
    private readonly client: PacsClient,
    private readonly hooks: ReviewQueueHooks,
  ) {}

  open(projectId: bigint): void {
    this.projectId = projectId;
    this.hooks.section.hidden = false;
    void this.refresh();
  }

  close(): void {
    this.loading.abort();
    this.projectId = undefined;
    this.hooks.section.hidden = true;
    this.hooks.list.replaceChildren();
    delete this.hooks.list.dataset["loaded"];
  }

  async refresh(): Promise<void> {
    const projectId = this.projectId;
    if (projectId === undefined) return;
    this.loading.abort();
    this.loading = new AbortController();
    const signal = this.loading.signal;
    const list = this.hooks.list;
    delete list.dataset["loaded"];
    try {
      const waiting: Annotation[] = [];
      let pageToken = "";
      do {
        const page = await this.client.annotations.listAnnotations(
          { projectId, reviewState: ReviewState.SUBMITTED, pageSize: QUEUE_PAGE, pageToken },
          { signal, ...CALL },
        );
        waiting.push(...page.annotations);
        pageToken = page.nextPageToken;
      } while (pageToken && waiting.length < MAX_QUEUED);
      const rows = waiting.map((annotation) => this.row(annotation));
      if (rows.length === 0) rows.push(element("li", { className: "meta", text: "nothing waits for review" }));
      if (pageToken) rows.push(element("li", { className: "meta", text: `only the newest ${MAX_QUEUED} are listed` }));
      list.replaceChildren(...rows);
      list.dataset["count"] = String(waiting.length);
      list.dataset["loaded"] = "true";
    } catch (error) {
      if (!isAbort(error)) this.hooks.report(`review queue: ${describeError(error)}`, true);
    }
  }

  private row(annotation: Annotation): HTMLLIElement {
    const changed = (reviewed: Annotation): void => {
      this.hooks.changed(reviewed);
      void this.refresh();
    };
    const controls = new ReviewControls(
      annotationSteps(this.client, () => annotation, changed, this.hooks.report),
      this.hooks.report,
    );
    controls.render(annotation.review);
    const review = annotation.review;
    const submitted = review?.userId ? `submitted by user ${review.userId} ${formatTime(review.changedAt?.seconds)}` : "";
    const meta = [`study ${annotation.studyUid}`, `r${annotation.revision}`, submitted].filter(Boolean).join(" · ");
    const open = element("button", { className: "open-study", text: "Open study" });
    open.type = "button";
    open.addEventListener("click", () => this.hooks.openStudy(annotation.studyUid));
    return element(
      "li",
      { className: "queued", data: { annotationId: String(annotation.id) } },
      element("span", { className: "annotation-id", text: `#${annotation.id}` }),
      element("span", { className: "annotation-type", text: annotation.annotationType }),
      element("span", { className: "meta", text: meta }),
      open,
      controls.root,
    );
  }
}
