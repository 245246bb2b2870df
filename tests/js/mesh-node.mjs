// MQTT.js from Node: node mesh-node.mjs URL NAME ALL_NAMES_CSV [CA_FILE]
import mqtt from 'mqtt';
import { readFileSync } from 'node:fs';
import { runMesh } from './mesh.js';

const [url, name, allCsv, ca] = process.argv.slice(2);
const options = ca ? { ca: readFileSync(ca), rejectUnauthorized: true } : {};
runMesh(mqtt, { url, name, all: allCsv.split(','), options, log: (m) => console.log(m) }).then(
  (got) => {
    console.log(`DONE ${name} ${got.join(',')}`);
    process.exit(0);
  },
  (e) => {
    console.log(`FAIL ${e.message}`);
    process.exit(1);
  },
);
