//! Host bindings generated from `wit/weir-plugin.wit` (`weir:plugin@0.3.0`): the `host`
//! and `context` imports the broker provides, and one `GuestIndices` per hook interface
//! so a plugin that exports only some hooks can still be loaded.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // A shadow's answers are compared with the active version's.
    additional_derives: [PartialEq],
    with: {
        "weir:plugin/context.client": super::context::ClientRef,
        "weir:plugin/context.message": super::context::MessageRef,
        "weir:plugin/context.messages": super::context::MessagesRef,
    },
});

/// The same for components built against `weir:plugin@0.2.0` (`wit/v0.2.0/`). 0.3.0
/// kept every 0.2.0 type, so they are the 0.3.0 ones: a 0.2.0 hook is called with the
/// same values and answers the same values as before.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "plugin",
        with: {
            "weir:plugin/types@0.2.0": super::weir::plugin::types,
        },
    });
}

/// The same for components built against `weir:plugin@0.1.0` (`wit/v0.1.0/`), whose
/// types 0.2.0 and 0.3.0 kept too.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "plugin",
        with: {
            "weir:plugin/types@0.1.0": super::weir::plugin::types,
        },
    });
}
