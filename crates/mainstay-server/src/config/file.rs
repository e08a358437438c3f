//! `--config-file`: Mainstay's TOML or etcd's YAML, both read into the same
//! flat list of settings (nested sections become dotted keys), so that one
//! table decides what each key means.

use std::path::Path;

use anyhow::{Context, bail};

/// The two file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Mainstay's own: durations given as a bare number are milliseconds.
    Toml,
    /// etcd's: keys are etcd's flag names; durations given as a bare number are
    /// nanoseconds (etcd decodes them into Go's `time.Duration`).
    Yaml,
}

/// A value in a config file, with only the distinctions settings need.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FileValue {
    /// A boolean.
    Bool(bool),
    /// A whole number.
    Int(i128),
    /// Text (also a float, written back as text: no setting takes one).
    Text(String),
    /// A sequence, for the list settings (`log-outputs: [stderr]`).
    List(Vec<FileValue>),
}

impl FileValue {
    /// As text: lists comma-joined, as on etcd's command line.
    pub(crate) fn text(&self) -> String {
        match self {
            FileValue::Bool(value) => value.to_string(),
            FileValue::Int(value) => value.to_string(),
            FileValue::Text(value) => value.clone(),
            FileValue::List(values) => values
                .iter()
                .map(FileValue::text)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Which format `path` is in: `.yaml`/`.yml` are YAML, `.toml` TOML; anything
/// else (etcd's files are often `etcd.conf`) is TOML if it parses as TOML and
/// YAML otherwise.
pub(crate) fn format_of(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Format::Yaml,
        Some("toml") => Format::Toml,
        _ if text.parse::<toml::Table>().is_ok() => Format::Toml,
        _ => Format::Yaml,
    }
}

/// Reads `path` into (key, value) pairs, in file order. A key left empty in
/// YAML (`wal-dir:`) is not set, as etcd reads it.
pub(crate) fn read(path: &Path) -> anyhow::Result<(Format, Vec<(String, FileValue)>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config-file: read {}", path.display()))?;
    let format = format_of(path, &text);
    let entries =
        parse(&text, format).with_context(|| format!("--config-file: parse {}", path.display()))?;
    Ok((format, entries))
}

/// Parses a file's text.
pub(crate) fn parse(text: &str, format: Format) -> anyhow::Result<Vec<(String, FileValue)>> {
    let mut entries = Vec::new();
    match format {
        Format::Toml => {
            let table: toml::Table = text.parse()?;
            for (key, value) in table {
                flatten_toml(&normalise(&key), value, &mut entries)?;
            }
        }
        Format::Yaml => {
            let document: serde_norway::Value = serde_norway::from_str(text)?;
            match document {
                serde_norway::Value::Null => {}
                serde_norway::Value::Mapping(mapping) => {
                    for (key, value) in mapping {
                        let key = yaml_key(key)?;
                        flatten_yaml(&normalise(&key), value, &mut entries)?;
                    }
                }
                _ => bail!("expected a mapping of settings (`name: value` lines)"),
            }
        }
    }
    Ok(entries)
}

/// etcd's keys use `-`; Mainstay's TOML always accepted `_` as well.
fn normalise(key: &str) -> String {
    key.replace('_', "-")
}

fn yaml_key(key: serde_norway::Value) -> anyhow::Result<String> {
    match key {
        serde_norway::Value::String(key) => Ok(key),
        other => bail!("a setting's name must be text, not {other:?}"),
    }
}

fn flatten_toml(
    key: &str,
    value: toml::Value,
    entries: &mut Vec<(String, FileValue)>,
) -> anyhow::Result<()> {
    if let toml::Value::Table(table) = value {
        for (inner, value) in table {
            flatten_toml(&format!("{key}.{}", normalise(&inner)), value, entries)?;
        }
        return Ok(());
    }
    entries.push((key.to_string(), toml_value(key, value)?));
    Ok(())
}

fn toml_value(key: &str, value: toml::Value) -> anyhow::Result<FileValue> {
    Ok(match value {
        toml::Value::String(text) => FileValue::Text(text),
        toml::Value::Integer(number) => FileValue::Int(i128::from(number)),
        toml::Value::Float(number) => FileValue::Text(number.to_string()),
        toml::Value::Boolean(value) => FileValue::Bool(value),
        toml::Value::Datetime(value) => FileValue::Text(value.to_string()),
        toml::Value::Array(values) => FileValue::List(
            values
                .into_iter()
                .map(|value| toml_value(key, value))
                .collect::<anyhow::Result<_>>()?,
        ),
        toml::Value::Table(_) => bail!("{key}: a list of tables is not a setting"),
    })
}

fn flatten_yaml(
    key: &str,
    value: serde_norway::Value,
    entries: &mut Vec<(String, FileValue)>,
) -> anyhow::Result<()> {
    match value {
        serde_norway::Value::Null => Ok(()),
        serde_norway::Value::Mapping(mapping) => {
            for (inner, value) in mapping {
                let inner = normalise(&yaml_key(inner)?);
                flatten_yaml(&format!("{key}.{inner}"), value, entries)?;
            }
            Ok(())
        }
        value => {
            if let Some(value) = yaml_value(key, value)? {
                entries.push((key.to_string(), value));
            }
            Ok(())
        }
    }
}

fn yaml_value(key: &str, value: serde_norway::Value) -> anyhow::Result<Option<FileValue>> {
    Ok(Some(match value {
        serde_norway::Value::Null => return Ok(None),
        serde_norway::Value::Bool(value) => FileValue::Bool(value),
        serde_norway::Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(number), _) => FileValue::Int(i128::from(number)),
            (None, Some(number)) => FileValue::Int(i128::from(number)),
            (None, None) => FileValue::Text(number.to_string()),
        },
        serde_norway::Value::String(text) => FileValue::Text(text),
        serde_norway::Value::Sequence(values) => FileValue::List(
            values
                .into_iter()
                .filter_map(|value| yaml_value(key, value).transpose())
                .collect::<anyhow::Result<_>>()?,
        ),
        serde_norway::Value::Mapping(_) => bail!("{key}: a list of mappings is not a setting"),
        serde_norway::Value::Tagged(tagged) => {
            bail!("{key}: YAML tags ({}) are not supported", tagged.tag)
        }
    }))
}
