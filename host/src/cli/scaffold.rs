//! `loom plugins new`: write a plugin project from the templates embedded
//! in the binary (`templates/plugins/`, see its README), ready to build.

use anyhow::{Context, bail};
use loom_host::engine::contract::HOST_VERSION;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with loom-sdk (vendored into the project); builds with cargo
    /// for wasm32-wasip2.
    Rust,
    /// JavaScript, componentized with componentize-js from npm (Node.js 20
    /// or later).
    Js,
    /// Python, componentized with componentize-py from PyPI.
    Python,
}

impl Lang {
    fn dir(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "py",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }
}

/// What a new plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A tool component (exports `loom:plugin/tool`).
    Tool,
    /// An architecture component, an agent loop (exports
    /// `loom:plugin/architecture`).
    Architecture,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Architecture => "architecture",
        }
    }
}

/// What `loom plugins new` was asked.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: 1-64 characters of [a-z0-9_-], starting with a
    /// letter. It names the project, the component file and the manifest;
    /// a tool is called after it with `-` as `_`, an architecture as given.
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// A tool or an architecture.
    #[arg(long, value_enum, default_value = "tool")]
    pub kind: Kind,
    /// Where to create the project (default: ./<name>). It must not exist
    /// or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The file set of a project: `(path in the project, text)`, rendered.
///
/// # Errors
///
/// When the name is not a valid plugin name, or no template exists for the
/// language and kind.
pub fn render(name: &str, lang: Lang, kind: Kind) -> anyhow::Result<Vec<(PathBuf, String)>> {
    check_name(name)?;
    let snake = name.replace('-', "_");
    let values: [(&str, &str); 7] = [
        ("{{name}}", name),
        ("{{snake}}", &snake),
        ("{{kind}}", kind.word()),
        ("{{wit_version}}", HOST_VERSION),
        ("{{loom_version}}", env!("CARGO_PKG_VERSION")),
        ("{{wit_bindgen_version}}", embedded::WIT_BINDGEN_VERSION),
        ("{{schemars_version}}", embedded::SCHEMARS_VERSION),
    ];
    let fill = |text: &str| {
        values.iter().fold(text.to_owned(), |text, (key, value)| {
            text.replace(key, value)
        })
    };
    let own = format!("{}-{}/", lang.dir(), kind.word());
    if !embedded::TEMPLATES
        .iter()
        .any(|(path, _)| path.starts_with(&own))
    {
        bail!(
            "this loom has no {} {} template (templates/plugins/{own} is missing)",
            lang.label(),
            kind.word()
        );
    }
    // Later layers override earlier ones file by file.
    let layers = ["common/".to_owned(), format!("{}-common/", lang.dir()), own];
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for layer in &layers {
        for (path, text) in embedded::TEMPLATES {
            let Some(relative) = path.strip_prefix(layer.as_str()) else {
                continue;
            };
            let relative = relative.strip_suffix(".tmpl").unwrap_or(relative);
            let target = PathBuf::from(relative.replace("__name__", name));
            files.retain(|(existing, _)| existing != &target);
            files.push((target, fill(text)));
        }
    }
    if lang == Lang::Rust {
        // The SDK's own sources, unchanged, and the WIT they bind.
        for (path, text) in embedded::RUST_SDK {
            files.push((PathBuf::from(path), (*text).to_owned()));
        }
    } else {
        for (path, text) in embedded::RUST_SDK {
            if path.starts_with("wit/") {
                files.push((PathBuf::from(path), (*text).to_owned()));
            }
        }
    }
    Ok(files)
}

/// A plugin name: what a crate, a file stem, a tool and a Python module
/// can all be called.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a plugin name: use 1-64 characters of a-z, 0-9, `-` and `_`, \
             starting with a letter (such as `weather-lookup`)"
        );
    }
    Ok(())
}

/// `loom plugins new`: write the project and say what to do next.
///
/// # Errors
///
/// A bad name, a directory that is not empty, or a file that cannot be
/// written.
pub fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let files = render(&args.name, args.lang, args.kind)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir)
            .with_context(|| format!("{} exists and is not a readable directory", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty; choose another --dir or remove it",
                dir.display()
            );
        }
    }
    for (path, text) in &files {
        write(&dir.join(path), text)?;
    }
    println!(
        "created {} {} `{}` in {}",
        args.lang.label(),
        args.kind.word(),
        args.name,
        dir.display()
    );
    println!("next, in {}:", dir.display());
    for line in next_steps(&args.name, args.lang, args.kind) {
        println!("  {line}");
    }
    println!("(the project's README.md says more; Loom's docs/plugins.md is the guide)");
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The commands that build, inspect and try a new project.
fn next_steps(name: &str, lang: Lang, kind: Kind) -> Vec<String> {
    let snake = name.replace('-', "_");
    let mut steps = match lang {
        Lang::Rust => vec![
            "rustup target add wasm32-wasip2   # once".to_owned(),
            "cargo build --release --target wasm32-wasip2".to_owned(),
            "mkdir -p plugins".to_owned(),
            format!("cp target/wasm32-wasip2/release/{snake}.wasm plugins/{name}.wasm"),
        ],
        Lang::Js => vec![
            "npm install".to_owned(),
            format!("npm run build                      # writes plugins/{name}.wasm"),
        ],
        Lang::Python => vec![
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt".to_owned(),
            "mkdir -p plugins".to_owned(),
            format!(
                ".venv/bin/componentize-py -d wit/plugin@{HOST_VERSION} -w {}-plugin \
                 componentize app -o plugins/{name}.wasm",
                kind.word()
            ),
        ],
    };
    steps.push(format!("cp {name}.toml plugins/"));
    steps.push(format!("loom plugins inspect plugins/{name}.wasm"));
    steps.push(match kind {
        Kind::Tool => format!("loom tool call {snake} '{{\"name\": \"Ada\"}}'"),
        Kind::Architecture => format!("loom run --arch {name} --model echo \"hello\""),
    });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_in_every_template() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for kind in [Kind::Tool, Kind::Architecture] {
                let Ok(files) = render("my-plugin", lang, kind) else {
                    continue;
                };
                for (path, text) in files {
                    assert!(
                        !text.contains("{{"),
                        "{} keeps a placeholder",
                        path.display()
                    );
                    assert!(!path.to_string_lossy().contains("__name__"));
                    assert!(!path.to_string_lossy().ends_with(".tmpl"));
                }
            }
        }
    }

    #[test]
    fn a_rust_project_carries_the_sdk_and_the_wit_it_binds() {
        let files = render("my-plugin", Lang::Rust, Kind::Tool).expect("rust tool template");
        let has = |path: &str| files.iter().any(|(p, _)| p == Path::new(path));
        assert!(has("Cargo.toml") && has("src/lib.rs") && has("my-plugin.toml"));
        assert!(has("vendor/loom-sdk/Cargo.toml") && has("vendor/loom-sdk/src/lib.rs"));
        assert!(has("vendor/loom-sdk-macros/src/lib.rs"));
        assert!(has(&format!("wit/plugin@{HOST_VERSION}/worlds.wit")));
        let lib = &files
            .iter()
            .find(|(p, _)| p == Path::new("src/lib.rs"))
            .unwrap()
            .1;
        assert!(lib.contains("fn my_plugin("), "{lib}");
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        for bad in ["", "My-Tool", "1tool", "a b", "../x", &"x".repeat(65)] {
            let error = render(bad, Lang::Rust, Kind::Tool).unwrap_err().to_string();
            assert!(error.contains("a-z, 0-9"), "{bad}: {error}");
        }
    }
}
