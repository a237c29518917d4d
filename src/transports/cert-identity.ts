/**
 * The user a verified TLS client certificate names, handed from the listener
 * that terminated TLS to the authenticate hook. Listeners with
 * `useCnAsUsername` record it for the stream they give aedes (the TLS socket
 * itself, or the WebSocket stream over an HTTPS socket); the hook looks the
 * CONNECT's connection up here. It lives with the listeners, which read the
 * certificates; the authorizer (src/auth) only declares the lookup it needs
 * (CertUsernames) and the daemon hands it this one.
 */
import type { TLSSocket } from 'node:tls';

export interface CertIdentity {
  /** The certificate subject's CN; null when it has none (or several). */
  username: string | null;
}

export class CertIdentities {
  readonly #byConnection = new WeakMap<object, CertIdentity>();

  /** Records the identity of `socket`'s certificate for `connection`, if it presented a verified one. */
  record(connection: object, socket: TLSSocket): void {
    const identity = certIdentity(socket);
    if (identity) this.#byConnection.set(connection, identity);
  }

  get(connection: object): CertIdentity | undefined {
    return this.#byConnection.get(connection);
  }
}

/** The identity of a peer certificate that the CA verified; undefined without one. */
export function certIdentity(socket: TLSSocket): CertIdentity | undefined {
  if (!socket.authorized) return undefined;
  const certificate = socket.getPeerCertificate();
  if (!certificate || Object.keys(certificate).length === 0) return undefined;
  const cn: unknown = certificate.subject?.CN;
  return { username: typeof cn === 'string' && cn !== '' ? cn : null };
}
