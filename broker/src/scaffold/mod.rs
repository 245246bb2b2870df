//! `weir plugin new NAME --lang rust|python|js`: a plugin project that builds and
//! passes its own test out of the box. Each has one hook (`authorize`: topics under a
//! configured prefix are allowed, everything else is left to the next plugin), a
//! README, a cases file for `weir plugin test`, and `test.sh`, which builds the
//! component and runs that test. The WIT package is copied in, so the project is built
//! against exactly the interface of the broker that made it.

use std::path::{Path, PathBuf};

/// The interface this broker implements, as its projects are built against.
const WIT: &str = include_str!("../../../wit/weir-plugin.wit");

/// The SDK next to the sources this binary was built from.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("plugin name {0:?}: use letters, digits, '-' and '_', starting with a letter")]
    Name(String),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("the Rust plugin SDK is not at {0}; pass --sdk with the path of weir's plugin-sdk/")]
    Sdk(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the project `name` in `parent/name`; returns its directory. `weir` is the
/// binary its `test.sh` runs, `sdk` the Rust SDK it depends on (default: the one this
/// binary was built with).
pub fn create(
    name: &str,
    lang: Lang,
    parent: &Path,
    weir: &Path,
    sdk: Option<&Path>,
) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::Name(name.into()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let files = match lang {
        Lang::Rust => rust(name, &sdk_path(sdk)?),
        Lang::Python => python(name),
        Lang::Js => js(name),
    };
    let wasm = match lang {
        Lang::Rust => format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ),
        _ => format!("{name}.wasm"),
    };
    let common = [
        ("wit/weir-plugin.wit".to_string(), WIT.to_string()),
        ("config.toml".into(), format!("prefix = \"{name}/\"\n")),
        ("cases.toml".into(), cases(name)),
        ("README.md".into(), readme(name, lang, &wasm)),
        (
            "test.sh".into(),
            test_sh(lang, &script_wasm(lang, &wasm), weir),
        ),
    ];
    for (path, text) in files.into_iter().chain(common) {
        write(&dir.join(path), &text)?;
    }
    Ok(dir)
}

fn sdk_path(given: Option<&Path>) -> Result<PathBuf, ScaffoldError> {
    let sdk = given.map_or_else(|| PathBuf::from(BUILT_SDK), Path::to_path_buf);
    let sdk = sdk
        .canonicalize()
        .map_err(|_| ScaffoldError::Sdk(sdk.clone()))?;
    match sdk.join("Cargo.toml").is_file() {
        true => Ok(sdk),
        false => Err(ScaffoldError::Sdk(sdk)),
    }
}

fn write(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    let failed = |source| ScaffoldError::Write {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(path, text).map_err(failed)?;
    #[cfg(unix)]
    if path.extension().is_some_and(|e| e == "sh") {
        use std::os::unix::fs::PermissionsExt;
        let executable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(path, executable).map_err(failed)?;
    }
    Ok(())
}

/// `{{key}}` in `template` replaced by each value.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    (values.iter()).fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

fn rust(name: &str, sdk: &Path) -> Vec<(String, String)> {
    let sdk = sdk.display().to_string();
    let values = [("name", name), ("sdk", sdk.as_str())];
    vec![
        (
            "Cargo.toml".into(),
            fill(include_str!("templates/rust-Cargo.toml"), &values),
        ),
        (
            "src/lib.rs".into(),
            fill(include_str!("templates/rust-lib.rs.txt"), &values),
        ),
    ]
}

fn python(name: &str) -> Vec<(String, String)> {
    let app = fill(include_str!("templates/python-app.py"), &[("name", name)]);
    vec![("app.py".into(), app)]
}

fn js(name: &str) -> Vec<(String, String)> {
    let values = [
        ("name", name),
        ("COMPONENTIZE_JS", COMPONENTIZE_JS),
        ("PREVIEW2_SHIM", PREVIEW2_SHIM),
    ];
    vec![
        (
            "plugin.js".into(),
            fill(include_str!("templates/js-plugin.js"), &values),
        ),
        (
            "package.json".into(),
            fill(include_str!("templates/js-package.json"), &values),
        ),
    ]
}

/// The componentize-js release the JavaScript projects are built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// componentize-js 0.23 imports preview2-shim without declaring it, and needs a
/// release that preopens the filesystem (0.18 and later preopen nothing by default).
pub const PREVIEW2_SHIM: &str = "0.17.8";

fn cases(name: &str) -> String {
    fill(include_str!("templates/cases.toml"), &[("name", name)])
}

fn build_line(lang: Lang, wasm: &str) -> String {
    match lang {
        Lang::Rust => "cargo build --release --target wasm32-wasip2".into(),
        Lang::Python => format!("componentize-py -d wit -w authz-with-config componentize app -o {wasm}"),
        Lang::Js => format!(
            "npm install --no-audit --no-fund --loglevel=error && npx componentize-js plugin.js --wit wit --world-name authz-with-config --disable http fetch-event -o {wasm}"
        ),
    }
}

/// The component's path as `test.sh` finds it: cargo's target directory may be moved.
fn script_wasm(lang: Lang, wasm: &str) -> String {
    match (lang, wasm.strip_prefix("target/")) {
        (Lang::Rust, Some(rest)) => format!("\"${{CARGO_TARGET_DIR:-target}}/{rest}\""),
        _ => wasm.to_string(),
    }
}

fn test_sh(lang: Lang, wasm: &str, weir: &Path) -> String {
    format!(
        "#!/usr/bin/env bash\n# Builds the plugin and runs its cases against it, with the broker's sandbox.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n{}\n\"${{WEIR:-{}}}\" plugin test {wasm} --config config.toml --cases cases.toml\n",
        build_line(lang, wasm),
        weir.display()
    )
}

fn readme(name: &str, lang: Lang, wasm: &str) -> String {
    let needs = match lang {
        Lang::Rust => "Rust with `rustup target add wasm32-wasip2`",
        Lang::Python => "`pip install componentize-py`",
        Lang::Js => "Node.js 20.19 or later (componentize-js comes from npm)",
    };
    let build = build_line(lang, wasm);
    let values = [
        ("name", name),
        ("needs", needs),
        ("build", &build),
        ("wasm", wasm),
    ];
    fill(include_str!("templates/README.md"), &values)
}
