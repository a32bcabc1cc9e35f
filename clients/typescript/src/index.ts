/**
 * The PACS Extension Server's pacs.v1 API for browsers and Node, over gRPC-web.
 *
 * Calls go through the Envoy sidecar, which turns gRPC-web into gRPC (the Connect
 * protocol would need another Envoy filter). Every call carries the caller's
 * Keycloak access token as `authorization: Bearer ...`.
 *
 * ```ts
 * const pacs = createPacsClient("https://pacs.example", () => keycloak.token);
 * const { user } = await pacs.identity.login({});
 * for await (const event of pacs.annotations.watchAnnotations({ projectId: 1n })) { ... }
 * ```
 */
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AnnotationService } from "./gen/pacs/v1/annotation_pb.js";
import { IdentityService } from "./gen/pacs/v1/identity_pb.js";
import { MaskService } from "./gen/pacs/v1/mask_pb.js";

export * from "./gen/pacs/v1/annotation_pb.js";
export * from "./gen/pacs/v1/identity_pb.js";
export * from "./gen/pacs/v1/mask_pb.js";
export * from "./gen/pacs/v1/review_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";

/**
 * The current access token. Called before every call, so a provider that refreshes
 * tokens (Keycloak's adapter, for one) keeps long sessions working.
 */
export type TokenProvider = () => string | Promise<string>;

export interface PacsClient {
  readonly identity: Client<typeof IdentityService>;
  readonly annotations: Client<typeof AnnotationService>;
  readonly masks: Client<typeof MaskService>;
  /** For calling through other generated service descriptors or custom interceptors. */
  readonly transport: Transport;
}

export interface PacsClientOptions {
  /** Runs after the token is set, e.g. for logging or an `x-request-id`. */
  readonly interceptors?: readonly Interceptor[];
  /** A fetch to use instead of the global one (e.g. with `credentials` set). */
  readonly fetch?: typeof globalThis.fetch;
  /**
   * A deadline for every call that gives none of its own. Leave it unset when
   * watching: it would end WatchAnnotations streams too.
   */
  readonly defaultTimeoutMs?: number;
}

/** An interceptor that adds `authorization: Bearer <token>` to every call. */
export function bearerToken(tokenProvider: TokenProvider): Interceptor {
  return (next) => async (request) => {
    const token = await tokenProvider();
    // Without a token the server answers UNAUTHENTICATED, which says more than
    // a header holding "Bearer " would.
    if (token) {
      request.header.set("authorization", `Bearer ${token}`);
    }
    return next(request);
  };
}

/**
 * Clients of the three pacs.v1 services at `baseUrl`, the Envoy sidecar's origin
 * (e.g. `http://127.0.0.1:8080` for `make run`), sharing one gRPC-web transport.
 */
export function createPacsClient(
  baseUrl: string,
  tokenProvider: TokenProvider,
  options: PacsClientOptions = {},
): PacsClient {
  const transport = createGrpcWebTransport({
    baseUrl,
    // Envoy's gRPC-web filter speaks the binary format; so does every gRPC-web server.
    useBinaryFormat: true,
    interceptors: [bearerToken(tokenProvider), ...(options.interceptors ?? [])],
    ...(options.fetch ? { fetch: options.fetch } : {}),
    ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
  });
  return {
    identity: createClient(IdentityService, transport),
    annotations: createClient(AnnotationService, transport),
    masks: createClient(MaskService, transport),
    transport,
  };
}
