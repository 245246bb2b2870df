//! A plugin for `weir:plugin@0.9.0`, an interface version this broker does not speak:
//! the broker must refuse it.

wit_bindgen::generate!({
    inline: "
        package weir:plugin@0.9.0;
        interface authz {
            authorize: func(topic: string) -> bool;
        }
        world future-plugin {
            export authz;
        }
    ",
});

struct Future;

impl exports::weir::plugin::authz::Guest for Future {
    fn authorize(_topic: String) -> bool {
        true
    }
}

export!(Future);
