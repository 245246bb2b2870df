//! The `transformer` hook of the Weir plugin interface. A component exports the hooks whose
//! crates it links, so only plugins that implement this hook depend on this crate;
//! `weir_plugin_sdk::export_plugin!` does the rest.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "transformer-many-plugin",
    with: {
        "weir:plugin/types@0.3.0": weir_plugin_sdk::types,
        "weir:plugin/context@0.3.0": weir_plugin_sdk::context,
        "weir:plugin/host@0.3.0": weir_plugin_sdk::host,
    },
    pub_export_macro: true,
    default_bindings_module: "weir_plugin_transformer",
});
