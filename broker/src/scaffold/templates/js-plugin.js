// {{name}}: a Weir plugin in JavaScript. Clients may publish and subscribe under
// `prefix` (from the plugin's config); everything else is left to the next plugin.

let prefix = null;

export const lifecycle = {
  init(config) {
    const c = JSON.parse(config);
    if (typeof c.prefix !== "string") {
      throw "config needs a prefix";
    }
    prefix = c.prefix;
  },
};

export const authz = {
  authorize(client, access) {
    if (prefix !== null && access.topic.startsWith(prefix)) {
      return { tag: "allow" };
    }
    return { tag: "defer" };
  },
};
