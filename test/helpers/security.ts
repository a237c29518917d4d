/**
 * A daemon for the security tests: like startDaemon, plus the TLS listener's
 * address and every log line it writes (to check what is and is not logged).
 */
import net from 'node:net';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import * as mqttPacket from 'mqtt-packet';
import type { IConnackPacket } from 'mqtt-packet';
import type { Test } from 'tap';
import { createDaemon, type Daemon } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { createLogger } from '../../src/observability/logger.js';
import { hashPassword } from '../../src/auth/password-file.js';
import { tempDir, testConfig } from './daemon.js';

export interface LogRecord {
  /** The level's name: 'info', 'warn', ... */
  level: string;
  msg: string;
  [key: string]: unknown;
}

export class LogCapture {
  readonly records: LogRecord[] = [];
  /** Every line exactly as written, to search for what must never appear. */
  raw = '';
  readonly stream = new Writable({
    write: (chunk: Buffer, _encoding, callback) => {
      const text = chunk.toString('utf8');
      this.raw += text;
      for (const line of text.split('\n')) if (line.trim() !== '') this.records.push(JSON.parse(line) as LogRecord);
      callback();
    },
  });

  find(msg: string | RegExp, predicate: (record: LogRecord) => boolean = () => true): LogRecord | undefined {
    return this.records.find((record) => (typeof msg === 'string' ? record.msg === msg : msg.test(record.msg)) && predicate(record));
  }
}

export interface SecureDaemon {
  daemon: Daemon;
  log: LogCapture;
  mqttUrl: string;
  mqttsUrl: string;
  wsUrl: string;
  wssUrl: string;
  httpUrl: string;
  httpsUrl: string;
  tlsPort: number;
  httpPort: number;
}

type Overrides = Parameters<typeof testConfig>[1];

/** Builds (and by default starts) a daemon on loopback, port 0, logging at debug into a LogCapture. */
export async function startSecureDaemon(t: Test, overrides: Overrides = {}, options: { start?: boolean } = {}): Promise<SecureDaemon> {
  const log = new LogCapture();
  const config = testConfig(t, {
    ...overrides,
    tls: { host: '127.0.0.1', port: 0, ...overrides.tls },
  } as Overrides) as ConfigInput;
  const logger = createLogger({ level: 'debug', destination: log.stream as never });
  const daemon = await createDaemon(config, { logger });
  t.teardown(() => daemon.stop());
  if (options.start !== false) await daemon.start();
  const { mqtt, tls, http } = daemon.addresses();
  const path = daemon.config.http.websocket.path;
  return {
    daemon,
    log,
    mqttUrl: `mqtt://127.0.0.1:${mqtt?.port ?? 0}`,
    mqttsUrl: `mqtts://127.0.0.1:${tls?.port ?? 0}`,
    wsUrl: `ws://127.0.0.1:${http?.port ?? 0}${path}`,
    wssUrl: `wss://127.0.0.1:${http?.port ?? 0}${path}`,
    httpUrl: `http://127.0.0.1:${http?.port ?? 0}`,
    httpsUrl: `https://127.0.0.1:${http?.port ?? 0}`,
    tlsPort: tls?.port ?? 0,
    httpPort: http?.port ?? 0,
  };
}

/**
 * A password file of `users` (user name → password, hashed with cheap
 * scrypt parameters) and an ACL file of `acl`, in a temporary directory:
 * the `auth` section of a test's config.
 */
export async function authFiles(t: Test, users: Record<string, string>, acl: string): Promise<{ passwordFile: string; aclFile: string }> {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwd');
  const aclFile = path.join(dir, 'acl');
  const lines = await Promise.all(Object.entries(users).map(async ([user, password]) => `${user}:${await hashPassword(password, { N: 1024, r: 8, p: 1 })}\n`));
  await writeFile(passwordFile, lines.join(''));
  await writeFile(aclFile, acl);
  return { passwordFile, aclFile };
}

/**
 * A CONNECT from a chosen loopback source address (mqtt.js cannot pick one;
 * 127.0.0.0/8 all reaches lo on Linux); the CONNACK's return code.
 */
export function connackFrom(localAddress: string, port: number, username: string, password: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress });
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    const timer = setTimeout(() => reject(new Error('no CONNACK within 5 s')), 5000);
    parser.on('packet', (packet) => {
      if (packet.cmd !== 'connack') return;
      clearTimeout(timer);
      socket.destroy();
      resolve((packet as IConnackPacket).returnCode ?? -1);
    });
    socket.on('data', (data) => parser.parse(data));
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on('connect', () =>
      socket.write(
        mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: `from-${localAddress}-${username}`, username, password: Buffer.from(password) }),
      ),
    );
  });
}
