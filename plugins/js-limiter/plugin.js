// js-limiter: a Weir plugin in JavaScript, built with componentize-js. A rate limit per
// client on what it publishes: `messages_per_second` (and optionally
// `bytes_per_second`), with bursts of up to `burst` messages (default: one second's
// worth). A publish over the limit is refused with 0x96 (message rate too high);
// connects and subscribes are not limited.
//
// The buckets live in the broker (`bucket-take`), so every instance of the plugin, and
// every version after a reload, counts against the same ones.

import { bucketTake, log } from "weir:plugin/host@0.2.0";

const MESSAGE_RATE_TOO_HIGH = 0x96;
const KNOWN = new Set(["messages_per_second", "bytes_per_second", "burst"]);

let limits = null;

function positive(c, key) {
  const v = c[key];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !(v > 0)) throw `${key} must be a number above 0`;
  return v;
}

export const lifecycle = {
  // Called once per instance with the plugin's config table as JSON. Throwing refuses
  // the configuration (the broker does not load the plugin).
  init(config) {
    const c = config ? JSON.parse(config) : {};
    for (const key of Object.keys(c)) {
      if (!KNOWN.has(key)) throw `unknown config key ${key}`;
    }
    const messages = positive(c, "messages_per_second");
    if (messages === undefined) throw "messages_per_second is required";
    const bytes = positive(c, "bytes_per_second");
    const burst = positive(c, "burst") ?? Math.max(1, Math.ceil(messages));
    limits = { messages, bytes, burst };
    log("debug", `limiting each client to ${messages} messages/s`);
  },
};

export const limiter = {
  rateLimit(client, event) {
    if (limits === null || event.tag !== "publish") return { tag: "allow" };
    const key = `msgs/${client.clientId}`;
    // u64 arguments are BigInts; f64 ones plain numbers.
    if (!bucketTake(key, BigInt(limits.burst), limits.messages, 1n)) {
      return { tag: "reject", val: MESSAGE_RATE_TOO_HIGH };
    }
    if (limits.bytes !== undefined) {
      const capacity = BigInt(Math.ceil(limits.bytes));
      if (!bucketTake(`bytes/${client.clientId}`, capacity, limits.bytes, event.val)) {
        return { tag: "reject", val: MESSAGE_RATE_TOO_HIGH };
      }
    }
    return { tag: "allow" };
  },
};
