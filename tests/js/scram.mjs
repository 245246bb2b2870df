// MQTT 5 enhanced authentication with SCRAM-SHA-256 from MQTT.js, for Weir's tests:
//
//   node scram.mjs URL USERNAME PASSWORD [METHOD] [reauth]
//
// Connects with Authentication Method METHOD (default SCRAM-SHA-256), answers the
// broker's AUTH challenge, checks the server signature in the CONNACK, and with
// `reauth` re-authenticates once (AUTH 0x19) on the live connection. Prints one line:
// `OK connected verified` (and ` reauthenticated verified`), or `REFUSED <reason code>`,
// or `FAIL <what>`.
import mqtt from 'mqtt';
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

const [url, username, password, method = 'SCRAM-SHA-256', mode = ''] = process.argv.slice(2);

const hmac = (key, data) => createHmac('sha256', key).update(data).digest();
const sha256 = (data) => createHash('sha256').update(data).digest();

/** One SCRAM conversation: first(), final(serverFirst), verify(serverFinal). */
function scram() {
  const nonce = randomBytes(18).toString('base64');
  const bare = `n=${username.replaceAll('=', '=3D').replaceAll(',', '=2C')},r=${nonce}`;
  let expected;
  return {
    first: () => Buffer.from(`n,,${bare}`),
    final(serverFirst) {
      const attrs = Object.fromEntries(serverFirst.split(',').map((a) => [a[0], a.slice(2)]));
      if (!attrs.r.startsWith(nonce)) throw new Error('server nonce does not extend ours');
      const salted = pbkdf2Sync(password, Buffer.from(attrs.s, 'base64'), Number(attrs.i), 32, 'sha256');
      const clientKey = hmac(salted, 'Client Key');
      const withoutProof = `c=biws,r=${attrs.r}`;
      const authMessage = `${bare},${serverFirst},${withoutProof}`;
      const signature = hmac(sha256(clientKey), authMessage);
      const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]));
      expected = hmac(hmac(salted, 'Server Key'), authMessage);
      return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
    },
    verify(serverFinal) {
      const v = Buffer.from(String(serverFinal).replace(/^v=/, ''), 'base64');
      return expected !== undefined && v.length === expected.length && timingSafeEqual(v, expected);
    },
  };
}

let conversation = scram();
const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: `scram-${username}-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 10_000,
  properties: { authenticationMethod: method, authenticationData: conversation.first() },
});

let phase = 'connect';
let said = '';
const done = (line, code) => {
  console.log(line);
  client.end(true, () => process.exit(code));
  setTimeout(() => process.exit(code), 1000);
};

client.handleAuth = (packet, callback) => {
  const data = packet.properties?.authenticationData;
  try {
    if (packet.reasonCode === 24) {
      const final = conversation.final(String(data));
      callback(null, {
        cmd: 'auth',
        reasonCode: 24,
        properties: { authenticationMethod: method, authenticationData: final },
      });
      return;
    }
    if (packet.reasonCode === 0 && phase === 'reauth') {
      if (!conversation.verify(data)) return done('FAIL reauth server signature', 1);
      callback();
      return done(`${said} reauthenticated verified`, 0);
    }
    callback();
  } catch (e) {
    done(`FAIL ${e.message}`, 1);
  }
};

client.on('connect', (connack) => {
  if (!conversation.verify(connack.properties?.authenticationData)) {
    return done('FAIL server signature', 1);
  }
  said = 'OK connected verified';
  if (mode !== 'reauth') return done(said, 0);
  phase = 'reauth';
  conversation = scram();
  client._sendPacket({
    cmd: 'auth',
    reasonCode: 25,
    properties: { authenticationMethod: method, authenticationData: conversation.first() },
  });
});

client.on('error', (e) => done(e.code !== undefined ? `REFUSED ${e.code}` : `FAIL ${e.message}`, 2));
client.on('disconnect', (p) => done(`DISCONNECTED ${p.reasonCode}`, 3));
setTimeout(() => done('FAIL timeout', 4), 15_000);
