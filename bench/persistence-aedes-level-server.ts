/**
 * Bare aedes 1.2 on aedes-persistence-level (the setup the reporter
 * crashed): a TCP listener on a free loopback port, printed as the first
 * stdout line. Run by persistence-load.ts; needs the aedes-persistence-level
 * package (not a dependency of edgemqtt).
 *
 *   node dist-bench/bench/persistence-aedes-level-server.js <dir>
 */
import net from 'node:net';
import path from 'node:path';
import { Aedes } from 'aedes';
import { Level } from 'level';

async function main(): Promise<void> {
  const dir = process.argv[2] ?? '.';
  const moduleName = 'aedes-persistence-level';
  const { default: createPersistence } = (await import(moduleName)) as { default: (db: unknown) => unknown };
  const db = new Level(path.join(dir, 'aedes-level'), { valueEncoding: 'view' });
  const aedes = await Aedes.createBroker({ persistence: createPersistence(db) });
  const server = net.createServer({ noDelay: true }, (socket) => aedes.handle(socket));
  server.listen(0, '127.0.0.1', () => console.log((server.address() as net.AddressInfo).port));
  process.on('SIGTERM', () => {
    server.close();
    aedes.close(() => process.exit(0));
  });
}

main().catch((error: unknown) => {
  console.error('aedes-persistence-level server failed:', error);
  process.exit(1);
});
