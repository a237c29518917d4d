/**
 * Certificates for the TLS listeners (MQTT over TLS, and HTTPS carrying WSS):
 * read from PEM files, checked before use, swapped into a running server with
 * `setSecureContext()` so that a renewed certificate takes effect on SIGHUP
 * for new connections while established ones keep theirs.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { createSecureContext, type SecureContextOptions, type Server as TlsServer, type TlsOptions } from 'node:tls';
import { SecurityFileError } from '../errors.js';
import { readSecurityFile } from '../util/read-security-file.js';
import type { Logger } from '../observability/logger.js';

export interface TlsSettings {
  certFile: string;
  keyFile: string;
  keyPassphrase: string;
  caFile: string;
  requireClientCert: boolean;
  useCnAsUsername: boolean;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
}

/** What the log says about the certificate in use. */
export interface CertificateSummary {
  subject: string;
  issuer: string;
  validTo: string;
  fingerprint256: string;
}

/**
 * Options fixed for the server's lifetime. A CA file turns on client
 * certificate requests; without `requireClientCert` a client may still
 * connect without one (and log in with a password), while a certificate that
 * fails verification never counts as an identity (cert-identity.ts).
 */
export function tlsServerOptions(settings: TlsSettings, handshakeTimeoutMs: number): TlsOptions {
  return {
    requestCert: settings.caFile !== '',
    rejectUnauthorized: settings.requireClientCert,
    minVersion: settings.minVersion,
    handshakeTimeout: handshakeTimeoutMs,
  };
}

function readPem(file: string): Buffer {
  return readSecurityFile('EDGEMQTT_TLS_INVALID', file);
}

/**
 * Reads the certificate, key and CA files and builds a context from them, so
 * that a bad file (unreadable, not PEM, key not matching the certificate,
 * wrong passphrase) is refused here with EDGEMQTT_TLS_INVALID instead of
 * breaking handshakes later.
 */
export function loadSecureContextOptions(settings: TlsSettings): { options: SecureContextOptions; summary: CertificateSummary } {
  const cert = readPem(settings.certFile);
  const key = readPem(settings.keyFile);
  const ca = settings.caFile !== '' ? readPem(settings.caFile) : undefined;
  const options: SecureContextOptions = { cert, key, minVersion: settings.minVersion };
  if (settings.keyPassphrase !== '') options.passphrase = settings.keyPassphrase;
  if (ca) options.ca = ca;
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (cause) {
    throw new SecurityFileError('EDGEMQTT_TLS_INVALID', settings.certFile, [`not a PEM certificate (${codeOf(cause)})`], { cause });
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key, format: 'pem', ...(options.passphrase ? { passphrase: options.passphrase } : {}) });
  } catch (cause) {
    throw new SecurityFileError('EDGEMQTT_TLS_INVALID', settings.keyFile, [`not a usable PEM private key (${codeOf(cause)})`], { cause });
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new SecurityFileError('EDGEMQTT_TLS_INVALID', settings.keyFile, [`the key does not belong to the certificate in ${settings.certFile}`]);
  }
  if (ca) {
    try {
      new X509Certificate(ca);
    } catch (cause) {
      throw new SecurityFileError('EDGEMQTT_TLS_INVALID', settings.caFile, [`not a PEM CA certificate (${codeOf(cause)})`], { cause });
    }
  }
  try {
    createSecureContext(options);
  } catch (cause) {
    throw new SecurityFileError('EDGEMQTT_TLS_INVALID', settings.certFile, [`cannot build a TLS context (${codeOf(cause)})`], { cause });
  }
  const summary = { subject: x509.subject, issuer: x509.issuer, validTo: x509.validTo, fingerprint256: x509.fingerprint256 };
  return { options, summary };
}

function codeOf(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : String((error as Error).message ?? error);
}

/**
 * The certificate of one TLS server: `load()` at start and on reload reads
 * the files and applies them; when they are unusable it throws and the
 * server keeps the certificate it has.
 */
export class ServerCertificate {
  readonly #server: TlsServer;
  #settings: TlsSettings;
  readonly #log: Logger;
  #summary: CertificateSummary | undefined;

  constructor(server: TlsServer, settings: TlsSettings, log: Logger) {
    this.#server = server;
    this.#settings = settings;
    this.#log = log;
  }

  get summary(): CertificateSummary | undefined {
    return this.#summary;
  }

  /** Loads the files `settings` name (by default the current ones) and applies them. */
  load(settings: TlsSettings = this.#settings): CertificateSummary {
    const { options, summary } = loadSecureContextOptions(settings);
    this.#server.setSecureContext(options);
    this.#settings = settings;
    this.#summary = summary;
    const expiresInDays = (Date.parse(summary.validTo) - Date.now()) / 86_400_000;
    if (expiresInDays < 0) this.#log.error({ certificate: summary }, 'TLS certificate has expired');
    else if (expiresInDays < 14) this.#log.warn({ certificate: summary, expiresInDays: Math.floor(expiresInDays) }, 'TLS certificate expires soon');
    return summary;
  }

  /** Files this certificate is read from, as config keys under `prefix`. */
  keys(prefix: string): string[] {
    return [`${prefix}.certFile`, `${prefix}.keyFile`, ...(this.#settings.caFile !== '' ? [`${prefix}.caFile`] : [])];
  }
}

/** A listener whose certificate files can be re-read while it runs. */
export interface CertificateReloadable {
  /** Config section of its TLS settings, e.g. `tls` or `http.tls`. */
  readonly tlsConfigKey: string;
  /**
   * Reads the files `settings` names and applies them to new connections
   * (established ones keep theirs); returns the config keys of the files
   * applied. Throws a SecurityFileError, the old certificate staying in use,
   * when they are unusable. Only the file keys, keyPassphrase and minVersion
   * of `settings` are used; the rest is fixed for the server's lifetime.
   */
  reloadCertificates(settings: TlsSettings): string[];
}
