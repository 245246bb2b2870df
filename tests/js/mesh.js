// One participant of the "mesh" test, the same code in Node and in the browser: connect,
// subscribe to mesh/#, say READY; when mesh/go arrives publish mesh/<name>; finish once
// a message from every other participant has arrived.
export function runMesh(mqtt, { url, name, all, options = {}, log }) {
  const expect = all.filter((n) => n !== name);
  return new Promise((resolve, reject) => {
    const got = new Set();
    let published = false;
    // Once everything has arrived the client ends; an error after that (say, a late
    // acknowledgement written to the socket the broker closed after our DISCONNECT)
    // is not a failure of the exchange.
    let finished = false;
    const client = mqtt.connect(url, {
      clientId: name,
      protocolVersion: 5,
      reconnectPeriod: 0,
      connectTimeout: 10000,
      ...options,
    });
    const timer = setTimeout(() => {
      client.end(true);
      reject(new Error(`${name} timed out; got [${[...got]}], expected [${expect}]`));
    }, 40000);
    client.on('error', (e) => {
      if (finished) return;
      clearTimeout(timer);
      reject(new Error(`${name}: ${e.message}`));
    });
    client.on('connect', () => {
      client.subscribe('mesh/#', { qos: 1 }, (err) => {
        if (err) {
          reject(err);
        } else {
          log(`READY ${name}`);
        }
      });
    });
    client.on('message', (topic, payload) => {
      const from = topic.slice('mesh/'.length);
      if (from === 'go') {
        if (!published) {
          published = true;
          client.publish(`mesh/${name}`, name, { qos: 1 });
        }
      } else if (from !== name && payload.toString() === from) {
        got.add(from);
      }
      if (published && !finished && expect.every((e) => got.has(e))) {
        finished = true;
        clearTimeout(timer);
        client.end(false, () => resolve([...got].sort()));
      }
    });
  });
}
