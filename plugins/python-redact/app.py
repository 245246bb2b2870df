"""A Weir plugin in Python: masks secret fields in JSON payloads before they are routed.

For every message whose topic matches `filter` (default `#`) and whose payload is a JSON
object, each field named in `fields` (at any depth) is replaced by `mask`, and the message
gets the user property `redacted-by: python-redact`. Other messages pass unchanged.

Built with componentize-py against the `transformer-with-config` world of wit/:
    componentize-py -d ../../wit -w transformer-with-config componentize app -o python-redact.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

CONFIG = {"fields": ["password", "token", "secret"], "mask": "***", "filter": "#"}


def topic_matches(filter_: str, topic: str) -> bool:
    if topic.startswith("$") and filter_[:1] in ("+", "#"):
        return False
    f, t = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def redact(value, fields, mask) -> bool:
    changed = False
    if isinstance(value, dict):
        for key in value:
            if key in fields:
                value[key] = mask
                changed = True
            else:
                changed |= redact(value[key], fields, mask)
    elif isinstance(value, list):
        for item in value:
            changed |= redact(item, fields, mask)
    return changed


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        global CONFIG
        try:
            given = json.loads(config)
        except ValueError as e:
            raise Err(f"config is not JSON: {e}")
        merged = dict(CONFIG, **given)
        unknown = set(merged) - {"fields", "mask", "filter"}
        if unknown:
            raise Err(f"unknown config keys: {sorted(unknown)}")
        if not isinstance(merged["fields"], list) or not all(isinstance(f, str) for f in merged["fields"]):
            raise Err("fields must be a list of strings")
        merged["fields"] = set(merged["fields"])
        CONFIG = merged


class Transformer(exports.Transformer):
    def transform(self, client: types.Client, message: types.Message) -> types.TransformResult:
        if not topic_matches(CONFIG["filter"], message.topic):
            return types.TransformResult_Keep()
        try:
            doc = json.loads(message.payload)
        except ValueError:
            return types.TransformResult_Keep()
        if not redact(doc, CONFIG["fields"], CONFIG["mask"]):
            return types.TransformResult_Keep()
        message.payload = json.dumps(doc, separators=(",", ":")).encode()
        message.user_properties.append(types.Pair(name="redacted-by", value="python-redact"))
        host.log(types.Level.DEBUG, f"redacted a message from {client.client_id} on {message.topic}")
        return types.TransformResult_Replace(message)
