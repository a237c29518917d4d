/**
 * A daemon with the admin API on, and a plain HTTP caller for it: a password
 * file with an admin user (ops), an MQTT-only user (sensor) and a token file,
 * all in a temporary directory.
 */
import http from 'node:http';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import type { Test } from 'tap';
import { hashPassword } from '../../src/auth/password-file.js';
import { tempDir } from './daemon.js';
import { startSecureDaemon, type SecureDaemon } from './security.js';

export const OPS = { user: 'ops', password: 'ops-secret' };
export const SENSOR = { user: 'sensor', password: 'sensor-secret' };
export const TOKEN = 'c2VjcmV0LXRva2VuLWZvci10ZXN0cw';

export interface AdminFiles {
  dir: string;
  passwordFile: string;
  tokenFile: string;
}

export async function adminFiles(t: Test): Promise<AdminFiles> {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwd');
  const lines = [`${OPS.user}:${await hashPassword(OPS.password)}`, `${SENSOR.user}:${await hashPassword(SENSOR.password)}`];
  await writeFile(passwordFile, `${lines.join('\n')}\n`);
  const tokenFile = path.join(dir, 'admin-token');
  await writeFile(tokenFile, `${TOKEN}\n`);
  return { dir, passwordFile, tokenFile };
}

type Overrides = Parameters<typeof startSecureDaemon>[1];

export async function startAdminDaemon(t: Test, overrides: Overrides = {}): Promise<SecureDaemon & { files: AdminFiles }> {
  const files = await adminFiles(t);
  const running = await startSecureDaemon(t, {
    ...overrides,
    auth: { passwordFile: files.passwordFile, ...overrides.auth },
    admin: { enabled: true, users: [OPS.user], tokenFile: files.tokenFile, ...overrides.admin },
  } as Overrides);
  return { ...running, files };
}

/** null: no Authorization header. */
export type Credentials = { user: string; password: string } | { token: string } | null;

export interface ApiResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: any;
}

/** One HTTP request; `localAddress` picks the loopback source address (127.0.0.0/8 all reaches lo). */
export function call(
  baseUrl: string,
  method: string,
  pathAndQuery: string,
  credentials: Credentials = OPS,
  localAddress?: string,
): Promise<ApiResponse> {
  const headers: Record<string, string> = {};
  if (credentials && 'token' in credentials) headers.Authorization = `Bearer ${credentials.token}`;
  else if (credentials) headers.Authorization = `Basic ${Buffer.from(`${credentials.user}:${credentials.password}`).toString('base64')}`;
  return new Promise((resolve, reject) => {
    const request = http.request(new URL(pathAndQuery, baseUrl), { method, headers, ...(localAddress ? { localAddress } : {}), timeout: 10_000 }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // Not JSON: the test sees the text.
        }
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body });
      });
    });
    request.on('timeout', () => request.destroy(new Error(`${method} ${pathAndQuery}: no answer within 10 s`)));
    request.on('error', reject);
    request.end();
  });
}
