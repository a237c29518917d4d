/**
 * A throwaway PKI made with the openssl CLI in a temp dir: a CA, a server
 * certificate for 127.0.0.1/localhost, client certificates with a chosen CN,
 * and a second, foreign CA whose certificates the broker must not trust.
 * EC P-256 keys, so that making them takes milliseconds.
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Test } from 'tap';
import { tempDir } from './daemon.js';

const run = promisify(execFile);

export interface KeyPair {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
}

export interface Pki {
  dir: string;
  ca: KeyPair;
  /** A CA the broker does not know. */
  foreignCa: KeyPair;
  server: KeyPair;
  /** Issues a certificate; `usage` picks serverAuth (SAN 127.0.0.1, localhost) or clientAuth. */
  issue(name: string, cn: string, options?: { usage?: 'server' | 'client'; ca?: KeyPair; days?: number }): Promise<KeyPair>;
  /** The key of `pair` encrypted with `passphrase`. */
  encryptKey(pair: KeyPair, passphrase: string): Promise<string>;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await run('openssl', args, { cwd });
}

async function pair(dir: string, name: string): Promise<KeyPair> {
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  return { certFile, keyFile, cert: await readFile(certFile), key: await readFile(keyFile) };
}

async function makeCa(dir: string, name: string, cn: string): Promise<KeyPair> {
  await openssl(
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return pair(dir, name);
}

export async function makePki(t: Test): Promise<Pki> {
  const dir = tempDir(t, 'edgemqtt-pki-');
  const ca = await makeCa(dir, 'ca', 'edgemqtt test CA');
  const foreignCa = await makeCa(dir, 'foreign-ca', 'someone else CA');
  let serial = 1;
  const issue: Pki['issue'] = async (name, cn, options = {}) => {
    const signer = options.ca ?? ca;
    const usage = options.usage ?? 'client';
    await openssl(
      ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`],
      dir,
    );
    const extensions =
      usage === 'server'
        ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
        : 'extendedKeyUsage=clientAuth\n';
    await writeFile(path.join(dir, `${name}.ext`), extensions);
    await openssl(
      [
        'x509', '-req', '-in', `${name}.csr`, '-CA', signer.certFile, '-CAkey', signer.keyFile,
        '-set_serial', String(serial++), '-days', String(options.days ?? 2), '-out', `${name}.crt`, '-extfile', `${name}.ext`,
      ],
      dir,
    );
    return pair(dir, name);
  };
  const server = await issue('server', 'localhost', { usage: 'server' });
  return {
    dir,
    ca,
    foreignCa,
    server,
    issue,
    async encryptKey(keyPair, passphrase) {
      const out = `${path.basename(keyPair.keyFile, '.key')}-encrypted.key`;
      await openssl(['pkey', '-in', keyPair.keyFile, '-aes256', '-passout', `pass:${passphrase}`, '-out', out], dir);
      return path.join(dir, out);
    },
  };
}
