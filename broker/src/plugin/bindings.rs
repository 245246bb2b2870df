//! Host bindings generated from `wit/weir-plugin.wit` (`weir:plugin@0.2.0`): the `host`
//! import the broker provides, and one `GuestIndices` per hook interface so a plugin
//! that exports only some hooks can still be loaded.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // A shadow's answers are compared with the active version's.
    additional_derives: [PartialEq],
});

/// The same for components built against `weir:plugin@0.1.0` (`wit/v0.1.0/`). 0.2.0
/// changed none of 0.1.0's types, so they are the 0.2.0 ones: a 0.1.0 hook is called
/// with the same values and answers the same values as its 0.2.0 twin.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "plugin",
        with: {
            "weir:plugin/types@0.1.0": super::weir::plugin::types,
        },
    });
}
