// The viewer page: sign in with a token, pick a project and a study, watch its
// annotations live, open mask groups, create annotations, review them and restore
// earlier revisions.
import type { JsonObject } from "@bufbuild/protobuf";

import { createPacsClient, type Annotation, type PacsClient, type Project } from "../src/index.js";
import { byId, describeError, element, newRequestId } from "./dom.js";
import { MaskView } from "./mask-view.js";
import { ReviewQueue } from "./review-view.js";
import { StudyView } from "./study-view.js";

/** config.json beside the page, written by whoever serves it (the local stack does). */
interface ViewerConfig {
  readonly apiBaseUrl?: string;
  /** Present only on the local stack: where this page can get a token from its dev issuer. */
  readonly devTokenPath?: string;
}

const VIEWER_SOFTWARE = "pacs-viewer-demo/0.1";

const ui = {
  status: byId("status", HTMLElement),
  connectForm: byId("connect-form", HTMLFormElement),
  apiUrl: byId("api-url", HTMLInputElement),
  token: byId("token", HTMLInputElement),
  devToken: byId("dev-token", HTMLFieldSetElement),
  devUser: byId("dev-user", HTMLInputElement),
  devAdmin: byId("dev-admin", HTMLInputElement),
  fetchToken: byId("fetch-token", HTMLButtonElement),
  whoami: byId("whoami", HTMLElement),
  browse: byId("browse", HTMLElement),
  project: byId("project", HTMLSelectElement),
  study: byId("study", HTMLSelectElement),
  studyForm: byId("study-form", HTMLFormElement),
  studyUid: byId("study-uid", HTMLInputElement),
  studySection: byId("study-view", HTMLElement),
  studyLabel: byId("study-label", HTMLElement),
  live: byId("live", HTMLElement),
  annotations: byId("annotations", HTMLUListElement),
  createForm: byId("create-form", HTMLFormElement),
  newType: byId("new-type", HTMLInputElement),
  newSeries: byId("new-series", HTMLInputElement),
  newData: byId("new-data", HTMLTextAreaElement),
  maskSection: byId("mask-view", HTMLElement),
  maskAnnotation: byId("mask-annotation", HTMLElement),
  maskGroups: byId("mask-groups", HTMLUListElement),
  slices: byId("slices", HTMLElement),
  exports: byId("mask-exports", HTMLElement),
  exportsGroup: byId("exports-group", HTMLElement),
  exportList: byId("export-list", HTMLUListElement),
  queueSection: byId("review-queue", HTMLElement),
  queue: byId("queue", HTMLUListElement),
  refreshQueue: byId("refresh-queue", HTMLButtonElement),
};

let client: PacsClient | undefined;
let studyView: StudyView | undefined;
let maskView: MaskView | undefined;
let reviewQueue: ReviewQueue | undefined;

function report(message: string, isError = false): void {
  ui.status.textContent = message;
  ui.status.className = isError ? "error" : "";
}

async function loadConfig(): Promise<ViewerConfig> {
  try {
    const reply = await fetch("config.json", { cache: "no-store" });
    return reply.ok ? ((await reply.json()) as ViewerConfig) : {};
  } catch {
    return {}; // served without one: the form asks for everything
  }
}

async function fetchDevToken(path: string): Promise<void> {
  const reply = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: ui.devUser.value, admin: ui.devAdmin.checked }),
  });
  if (!reply.ok) throw new Error(`the dev issuer said ${reply.status}: ${await reply.text()}`);
  const { token } = (await reply.json()) as { token: string };
  ui.token.value = token;
  report(`dev token for ${ui.devUser.value}; press Connect`);
}

async function connect(): Promise<void> {
  closeStudy();
  reviewQueue?.close();
  const token = ui.token.value.trim();
  const api = createPacsClient(ui.apiUrl.value.replace(/\/+$/, ""), () => token);
  const login = await api.identity.login({}, { timeoutMs: 15_000 });
  client = api;
  maskView = new MaskView(api, {
    section: ui.maskSection,
    title: ui.maskAnnotation,
    groups: ui.maskGroups,
    slices: ui.slices,
    exports: { section: ui.exports, title: ui.exportsGroup, list: ui.exportList },
    report,
  });
  reviewQueue = new ReviewQueue(api, {
    section: ui.queueSection,
    list: ui.queue,
    openStudy,
    changed: (annotation) => studyView?.show(annotation),
    report,
  });
  const who = login.user;
  ui.whoami.textContent = `Signed in as ${who?.username ?? "?"} (user ${who?.id ?? "?"})${
    login.platformAdmin ? ", platform administrator" : ""
  }`;
  ui.whoami.dataset["userId"] = String(who?.id ?? "");
  const projects = await listProjects(api);
  ui.project.replaceChildren(
    element("option", { text: projects.length ? "choose a project" : "no projects" }),
    ...projects.map((p) => {
      const option = element("option", { text: `${p.name}${p.isActive ? "" : " (inactive)"}` });
      option.value = String(p.id);
      return option;
    }),
  );
  ui.project.options[0]!.value = "";
  ui.study.replaceChildren();
  ui.browse.hidden = false;
  report(`connected; ${projects.length} project(s)`);
}

async function listProjects(api: PacsClient): Promise<Project[]> {
  const projects: Project[] = [];
  let pageToken = "";
  do {
    const page = await api.identity.listProjects(
      { pageSize: 100, pageToken, includeInactive: true },
      { timeoutMs: 15_000 },
    );
    projects.push(...page.projects);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return projects;
}

/** The studies that have annotations in the project, from its newest annotations. */
async function loadStudies(api: PacsClient, projectId: bigint): Promise<void> {
  const page = await api.annotations.listAnnotations({ projectId, pageSize: 500 }, { timeoutMs: 15_000 });
  const studies = [...new Set(page.annotations.map((a) => a.studyUid))];
  ui.study.replaceChildren(
    element("option", { text: studies.length ? "choose a study" : "no annotated studies yet" }),
    ...studies.map((uid) => {
      const option = element("option", { text: uid });
      option.value = uid;
      return option;
    }),
  );
  ui.study.options[0]!.value = "";
}

function selectedProject(): bigint | undefined {
  return ui.project.value ? BigInt(ui.project.value) : undefined;
}

function openStudy(studyUid: string): void {
  const projectId = selectedProject();
  if (!client || projectId === undefined || !studyUid) return;
  closeStudy();
  ui.studyLabel.textContent = studyUid;
  ui.studySection.hidden = false;
  ui.annotations.replaceChildren();
  delete ui.annotations.dataset["loaded"];
  const view = new StudyView(client, projectId, studyUid, {
    list: ui.annotations,
    badge: ui.live,
    openMasks: (annotation: Annotation) => void maskView?.open(annotation),
    changed: () => void reviewQueue?.refresh(),
    groupReviewed: (_annotationId, groupId, review) => maskView?.reviewed(groupId, review),
    report,
  });
  studyView = view;
  view.start();
}

function closeStudy(): void {
  studyView?.stop();
  studyView = undefined;
  maskView?.close();
  ui.studySection.hidden = true;
}

async function createAnnotation(): Promise<void> {
  const view = studyView;
  if (!client || !view) return;
  const data: unknown = JSON.parse(ui.newData.value);
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new Error("the data must be a JSON object");
  }
  const reply = await client.annotations.createAnnotation(
    {
      annotation: {
        projectId: view.projectId,
        studyUid: view.studyUid,
        seriesUid: ui.newSeries.value.trim(),
        annotationType: ui.newType.value.trim(),
        annotationData: data as JsonObject,
        viewerSoftware: VIEWER_SOFTWARE,
      },
      // A retried submit creates one annotation.
      requestId: newRequestId(),
    },
    { timeoutMs: 15_000 },
  );
  if (reply.annotation) {
    view.show(reply.annotation);
    report(`created annotation #${reply.annotation.id}`);
  }
}

/** Runs an event handler, reporting its failure on the status line. */
function handle(action: () => Promise<void> | void): () => void {
  return () => {
    Promise.resolve()
      .then(action)
      .catch((error: unknown) => report(describeError(error), true));
  };
}

function submit(form: HTMLFormElement, action: () => Promise<void> | void): void {
  const run = handle(action);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
}

async function main(): Promise<void> {
  const config = await loadConfig();
  const fromQuery = new URLSearchParams(location.search).get("api");
  ui.apiUrl.value = fromQuery ?? config.apiBaseUrl ?? location.origin;
  const devTokenPath = config.devTokenPath;
  if (devTokenPath) {
    ui.devToken.hidden = false;
    ui.fetchToken.addEventListener("click", handle(() => fetchDevToken(devTokenPath)));
  }
  submit(ui.connectForm, connect);
  ui.project.addEventListener(
    "change",
    handle(async () => {
      closeStudy();
      reviewQueue?.close();
      const projectId = selectedProject();
      if (projectId !== undefined) reviewQueue?.open(projectId);
      if (client && projectId !== undefined) await loadStudies(client, projectId);
    }),
  );
  ui.study.addEventListener("change", () => openStudy(ui.study.value));
  submit(ui.studyForm, () => openStudy(ui.studyUid.value.trim()));
  submit(ui.createForm, createAnnotation);
  ui.refreshQueue.addEventListener("click", handle(() => reviewQueue?.refresh()));
  document.body.dataset["ready"] = "true";
  report("paste a token and connect");
}

void main();
