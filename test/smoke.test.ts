import t from 'tap';
import { startDaemon } from './helpers/daemon.js';
import { connectClient, MessageLog } from './helpers/mqtt.js';

t.test('a TCP publish reaches a WebSocket subscriber', async (t) => {
  const { mqttUrl, wsUrl } = await startDaemon(t);
  const browser = await connectClient(t, wsUrl);
  const log = new MessageLog(browser);
  await browser.subscribeAsync('plant/#', { qos: 1 });
  const sensor = await connectClient(t, mqttUrl);
  await sensor.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
  const [message] = await log.waitForCount(1);
  t.equal(message?.topic, 'plant/line1/temp');
  t.equal(message?.payload, '21.5');
});
