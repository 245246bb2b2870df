"""{{name}}: a Weir plugin in Python. Clients may publish and subscribe under `prefix`
(from the plugin's config); everything else is left to the next plugin in the chain."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

PREFIX = None


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        global PREFIX
        try:
            PREFIX = json.loads(config)["prefix"]
        except (ValueError, KeyError) as e:
            raise Err(f"config needs a prefix: {e}")


class Authz(exports.Authz):
    def authorize(self, client: types.Client, access: types.Access) -> types.Decision:
        # A filter with a wildcard is under the prefix only if its wildcards are.
        topic = access.topic
        if PREFIX is not None and topic.startswith(PREFIX):
            return types.Decision_Allow()
        return types.Decision_Defer()
