// Small DOM helpers. Everything the server returns is set as text, never as HTML.
import { Code, ConnectError } from "../src/index.js";

type Constructor<T> = { new (): T; prototype: T };

/** The element with `id`, which the page must have, of the expected kind. */
export function byId<T extends HTMLElement>(id: string, kind: Constructor<T>): T {
  const node = document.getElementById(id);
  if (!(node instanceof kind)) {
    throw new Error(`the page has no ${kind.name} #${id}`);
  }
  return node;
}

export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  options: { className?: string; text?: string; data?: Record<string, string> } = {},
  ...children: Node[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined) node.textContent = options.text;
  for (const [key, value] of Object.entries(options.data ?? {})) node.dataset[key] = value;
  node.append(...children);
  return node;
}

/** A message fit for the status line: the gRPC code and the server's text. */
export function describeError(error: unknown): string {
  if (error instanceof ConnectError) {
    return `${Code[error.code] ?? error.code}: ${error.rawMessage}`;
  }
  return error instanceof Error ? error.message : String(error);
}

export function isAbort(error: unknown): boolean {
  return (
    (error instanceof ConnectError && error.code === Code.Canceled) ||
    (error instanceof DOMException && error.name === "AbortError")
  );
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** A request id for idempotent creates; works outside secure contexts too. */
export function newRequestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function formatTime(seconds: bigint | undefined): string {
  return seconds === undefined ? "" : new Date(Number(seconds) * 1000).toISOString().replace(".000Z", "Z");
}
