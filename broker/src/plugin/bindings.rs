//! Host bindings generated from `wit/weir-plugin.wit`: the `host` import the broker
//! provides, and one `GuestIndices` per hook interface so a plugin that exports only
//! some hooks can still be loaded.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});
