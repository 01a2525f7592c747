//! Where an image and its rebuild differ: the manifest's fields, each pair
//! of layers (paths grouped by the package they belong to), the config's
//! fields. Printed capped for people (`Display`), whole as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::listing::{Listing, Owners, Package, PathInfo};
use super::subject::Image;

#[derive(Debug, Serialize)]
pub struct Report {
    pub image: String,
    pub image_digest: Option<String>,
    pub rebuilt_digest: Option<String>,
    pub manifest: Vec<FieldDiff>,
    pub layers: Vec<LayerDiff>,
    pub config: Vec<FieldDiff>,
}

/// A field with another value on each side (`None`: absent there).
#[derive(Debug, Serialize)]
pub struct FieldDiff {
    pub field: String,
    pub image: Option<Value>,
    pub rebuild: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct LayerDiff {
    /// 1-based positions in the image and the rebuild.
    pub image_position: Option<usize>,
    pub rebuild_position: Option<usize>,
    /// Its history entry's `created_by` (the image's, else the rebuild's).
    pub created_by: String,
    /// The rebuild's, when it is another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild_created_by: Option<String>,
    pub image_digest: Option<String>,
    pub rebuild_digest: Option<String>,
    /// Same files (same diff_id), other compressed bytes.
    pub same_files: bool,
    /// Media type and annotations of the descriptors.
    pub descriptor: Vec<FieldDiff>,
    pub packages: Vec<PackageDiff>,
}

/// The differing paths of one package (or of none) in one layer.
#[derive(Debug, Serialize)]
pub struct PackageDiff {
    /// `wheel`, `deb`, or `none` for paths no package record names.
    pub kind: &'static str,
    pub name: Option<String>,
    pub image_version: Option<String>,
    pub rebuild_version: Option<String>,
    pub paths: Vec<PathDiff>,
}

#[derive(Debug, Serialize)]
pub struct PathDiff {
    pub path: String,
    /// `only in the image`, `only in the rebuild`, or the attributes that
    /// differ (`content`, `type`, `mode`, `owner`, `link target`, `mtime`).
    pub change: Vec<&'static str>,
    pub image: Option<PathInfo>,
    pub rebuild: Option<PathInfo>,
}

/// Compares `image` with `rebuilt`, reading the layers whose files differ.
pub fn compare(shown: &str, image: &Image, rebuilt: &Image) -> Result<Report> {
    let names = (layer_names(&image.config), layer_names(&rebuilt.config));
    let diff_ids = (image.diff_ids(), rebuilt.diff_ids());
    let pairs = align(&names.0, &names.1);
    // Every layer whose files differ is read once, on each side.
    let mut listings: (BTreeMap<usize, Listing>, BTreeMap<usize, Listing>) = Default::default();
    let mut owners = (Owners::default(), Owners::default());
    for &(a, b) in &pairs {
        let same_files = match (a, b) {
            (Some(a), Some(b)) => diff_ids.0.get(a) == diff_ids.1.get(b),
            _ => false,
        };
        if same_files {
            continue;
        }
        if let Some(a) = a {
            let listing = list(image, a, &names.0, "the image")?;
            owners.0.add(&listing);
            listings.0.insert(a, listing);
        }
        if let Some(b) = b {
            let listing = list(rebuilt, b, &names.1, "the rebuild")?;
            owners.1.add(&listing);
            listings.1.insert(b, listing);
        }
    }
    let mut layers = Vec::new();
    for &(a, b) in &pairs {
        let la = a.map(|i| &image.layers[i]);
        let lb = b.map(|i| &rebuilt.layers[i]);
        let same_files =
            a.is_some() && b.is_some() && diff_ids.0.get(a.unwrap()) == diff_ids.1.get(b.unwrap());
        // An old docker archive has no descriptors to compare.
        let descriptor = match (la, lb) {
            (Some(x), Some(y)) if image.manifest.is_some() => fields(
                &serde_json::json!({"mediaType": x.blob.media_type, "annotations": x.annotations}),
                &serde_json::json!({"mediaType": y.blob.media_type, "annotations": y.annotations}),
                "",
            ),
            _ => Vec::new(),
        };
        if same_files
            && la.map(|l| &l.blob.digest) == lb.map(|l| &l.blob.digest)
            && descriptor.is_empty()
        {
            continue;
        }
        let packages = if same_files {
            Vec::new()
        } else {
            let empty = Listing::default();
            let pa = a.and_then(|i| listings.0.get(&i)).unwrap_or(&empty);
            let pb = b.and_then(|i| listings.1.get(&i)).unwrap_or(&empty);
            path_diffs(pa, pb, &owners)
        };
        let name_a = a.and_then(|i| names.0.get(i).cloned());
        let name_b = b.and_then(|i| names.1.get(i).cloned());
        layers.push(LayerDiff {
            image_position: a.map(|i| i + 1),
            rebuild_position: b.map(|i| i + 1),
            created_by: name_a.clone().or(name_b.clone()).unwrap_or_default(),
            rebuild_created_by: name_b.filter(|n| Some(n) != name_a.as_ref() && name_a.is_some()),
            image_digest: la.map(|l| l.blob.digest.clone()),
            rebuild_digest: lb.map(|l| l.blob.digest.clone()),
            same_files,
            descriptor,
            packages,
        });
    }
    let manifest = match (&image.manifest, &rebuilt.manifest) {
        (Some(x), Some(y)) => {
            let strip = |m: &Value| {
                let mut m = m.clone();
                if let Some(o) = m.as_object_mut() {
                    o.remove("layers");
                    o.remove("config");
                }
                m
            };
            fields(&strip(x), &strip(y), "")
        }
        _ => Vec::new(),
    };
    Ok(Report {
        image: shown.to_string(),
        image_digest: image.manifest_digest.clone(),
        rebuilt_digest: rebuilt.manifest_digest.clone(),
        manifest,
        layers,
        config: config_fields(&image.config, &rebuilt.config),
    })
}

fn list(image: &Image, index: usize, names: &[String], side: &str) -> Result<Listing> {
    let layer = &image.layers[index];
    image.list_layer(layer).with_context(|| {
        format!(
            "layer {} of {side} ({}, {})",
            index + 1,
            names.get(index).map_or("no history entry", String::as_str),
            layer.blob.digest
        )
    })
}

/// Each layer's history entry (`created_by`), in order: the entries that
/// are not `empty_layer`, as tools pair them with layers.
pub fn layer_names(config: &Value) -> Vec<String> {
    config
        .get("history")
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter(|e| {
                    !e.get("empty_layer")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                })
                .map(|e| {
                    e.get("created_by")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(std::iter::repeat_with(String::new))
        .take(
            config
                .pointer("/rootfs/diff_ids")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
        )
        .collect()
}

/// Pairs the layers of two images: by position when there are as many,
/// else along the longest common run of history names, the layers between
/// two matches paired by position and the rest alone.
fn align(a: &[String], b: &[String]) -> Vec<(Option<usize>, Option<usize>)> {
    if a.len() == b.len() {
        return (0..a.len()).map(|i| (Some(i), Some(i))).collect();
    }
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut anchors = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if a[i] == b[j] {
            anchors.push((i, j));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    anchors.push((n, m));
    let mut pairs = Vec::new();
    let (mut i, mut j) = (0, 0);
    for (ai, aj) in anchors {
        while i < ai || j < aj {
            pairs.push(((i < ai).then_some(i), (j < aj).then_some(j)));
            i = (i + 1).min(ai);
            j = (j + 1).min(aj);
        }
        if ai < n {
            pairs.push((Some(ai), Some(aj)));
        }
        i = ai + 1;
        j = aj + 1;
    }
    pairs
}

/// The paths that differ between two layers, grouped by package.
fn path_diffs(a: &Listing, b: &Listing, owners: &(Owners, Owners)) -> Vec<PackageDiff> {
    let all: BTreeSet<&String> = a.paths.keys().chain(b.paths.keys()).collect();
    let mut groups: BTreeMap<(&'static str, Option<String>), PackageDiff> = BTreeMap::new();
    for path in all {
        let (x, y) = (a.paths.get(path), b.paths.get(path));
        let change = match (x, y) {
            (Some(x), Some(y)) => {
                let mut change = Vec::new();
                if x.kind != y.kind {
                    change.push("type");
                }
                if x.sha256 != y.sha256 || x.size != y.size {
                    change.push("content");
                }
                if x.mode != y.mode {
                    change.push("mode");
                }
                if (x.uid, x.gid) != (y.uid, y.gid) {
                    change.push("owner");
                }
                if x.link != y.link {
                    change.push("link target");
                }
                if x.mtime != y.mtime {
                    change.push("mtime");
                }
                if change.is_empty() {
                    continue;
                }
                change
            }
            (Some(_), None) => vec!["only in the image"],
            (None, Some(_)) => vec!["only in the rebuild"],
            (None, None) => continue,
        };
        let (pa, pb) = (owners.0.of(path), owners.1.of(path));
        let key_of = |p: &Package| (p.kind, Some(p.name.clone()));
        let key = pa.or(pb).map(key_of).unwrap_or(("none", None));
        let group = groups.entry(key.clone()).or_insert_with(|| PackageDiff {
            kind: key.0,
            name: key.1.clone(),
            image_version: None,
            rebuild_version: None,
            paths: Vec::new(),
        });
        // Versions from the side's own record of the same package.
        if let Some(p) = pa.filter(|p| key_of(p) == key) {
            group.image_version = group.image_version.take().or(p.version.clone());
        }
        if let Some(p) = pb.filter(|p| key_of(p) == key) {
            group.rebuild_version = group.rebuild_version.take().or(p.version.clone());
        }
        group.paths.push(PathDiff {
            path: path.clone(),
            change,
            image: x.cloned(),
            rebuild: y.cloned(),
        });
    }
    // Packages first, then the paths no package names; in each, paths on
    // both sides (other content, mode, ...) before those on one side.
    let mut out: Vec<PackageDiff> = groups.into_values().collect();
    for group in &mut out {
        group
            .paths
            .sort_by_key(|p| (p.image.is_none() || p.rebuild.is_none(), p.path.clone()));
    }
    out.sort_by_key(|g| (g.kind == "none", g.kind, g.name.clone()));
    out
}

/// The fields of two JSON values that differ: objects by key (dotted),
/// anything else as a whole.
fn fields(a: &Value, b: &Value, prefix: &str) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff_into(Some(a), Some(b), prefix, &mut out);
    out
}

fn diff_into(a: Option<&Value>, b: Option<&Value>, name: &str, out: &mut Vec<FieldDiff>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let field = if name.is_empty() {
                    key.clone()
                } else {
                    format!("{name}.{key}")
                };
                diff_into(x.get(key), y.get(key), &field, out);
            }
        }
        (x, y) if x != y => out.push(FieldDiff {
            field: name.to_string(),
            image: x.cloned(),
            rebuild: y.cloned(),
        }),
        _ => {}
    }
}

/// The config's fields that differ: `Env` by variable and `Labels` by key
/// (as objects), history entry by entry; the diff_ids are the layers'.
fn config_fields(a: &Value, b: &Value) -> Vec<FieldDiff> {
    let shape = |c: &Value| {
        let mut c = c.clone();
        if let Some(root) = c.as_object_mut() {
            root.remove("rootfs");
            if let Some(Value::Array(history)) = root.remove("history") {
                let entries: serde_json::Map<String, Value> = history
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (format!("[{i}]"), e))
                    .collect();
                root.insert("history".into(), Value::Object(entries));
            }
        }
        if let Some(Value::Array(env)) = c.pointer("/config/Env").cloned() {
            let vars: serde_json::Map<String, Value> = env
                .iter()
                .filter_map(Value::as_str)
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                    None => (e.to_string(), Value::Null),
                })
                .collect();
            c["config"]["Env"] = Value::Object(vars);
        }
        c
    };
    fields(&shape(a), &shape(b), "")
}

/// At most this many paths are printed per package, and this many
/// packages per layer; `--json` has them all.
const PATHS_SHOWN: usize = 10;
const PACKAGES_SHOWN: usize = 40;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = |d: &Option<String>| d.clone().unwrap_or_else(|| "no manifest".into());
        // REPO@sha256:… names its digest already.
        let image_digest = match &self.image_digest {
            Some(d) if self.image.ends_with(d.as_str()) => String::new(),
            other => format!(" ({})", digest(other)),
        };
        writeln!(
            f,
            "Not reproduced: {}{image_digest} differs from the rebuild ({})",
            self.image,
            digest(&self.rebuilt_digest)
        )?;
        for field in &self.manifest {
            writeln!(f, "manifest {}", field_line(field))?;
        }
        for layer in &self.layers {
            write_layer(f, layer)?;
        }
        if !self.config.is_empty() {
            writeln!(f, "config:")?;
            for field in &self.config {
                writeln!(f, "  {}", field_line(field))?;
            }
        }
        Ok(())
    }
}

fn write_layer(f: &mut fmt::Formatter<'_>, layer: &LayerDiff) -> fmt::Result {
    let position = match (layer.image_position, layer.rebuild_position) {
        (Some(a), Some(b)) if a == b => format!("layer {a}"),
        (Some(a), Some(b)) => format!("layer {a} (layer {b} of the rebuild)"),
        (Some(a), None) => format!("layer {a}, only in the image,"),
        (None, Some(b)) => format!("layer {b} of the rebuild, not in the image,"),
        (None, None) => "layer".into(),
    };
    write!(f, "{position} {:?}", layer.created_by)?;
    if let Some(other) = &layer.rebuild_created_by {
        write!(f, " ({other:?} in the rebuild)")?;
    }
    match (&layer.image_digest, &layer.rebuild_digest) {
        (Some(a), Some(b)) if layer.same_files => writeln!(
            f,
            ": the same files, other bytes ({a} in the image, {b} in the rebuild)"
        )?,
        (Some(a), Some(b)) if a == b => writeln!(f, ": the same blob {a}")?,
        (Some(a), Some(b)) => writeln!(f, ": {a} in the image, {b} in the rebuild")?,
        (Some(a), None) | (None, Some(a)) => writeln!(f, ": {a}")?,
        (None, None) => writeln!(f)?,
    }
    for field in &layer.descriptor {
        writeln!(f, "  descriptor {}", field_line(field))?;
    }
    for group in layer.packages.iter().take(PACKAGES_SHOWN) {
        let count = group.paths.len();
        let paths = if count == 1 { "path" } else { "paths" };
        let title = match (&group.name, &group.image_version, &group.rebuild_version) {
            (None, _, _) => "no package".to_string(),
            (Some(name), Some(a), Some(b)) if a != b => {
                format!(
                    "{} {name}: {a} in the image, {b} in the rebuild",
                    group.kind
                )
            }
            (Some(name), Some(v), None) => format!("{} {name} {v} (in the image)", group.kind),
            (Some(name), None, Some(v)) => format!("{} {name} {v} (in the rebuild)", group.kind),
            (Some(name), Some(v), Some(_)) => format!("{} {name} {v}", group.kind),
            (Some(name), None, None) => format!("{} {name}", group.kind),
        };
        writeln!(f, "  {title} ({count} {paths}):")?;
        for path in group.paths.iter().take(PATHS_SHOWN) {
            writeln!(f, "    {}", path_line(path))?;
        }
        if count > PATHS_SHOWN {
            let more = count - PATHS_SHOWN;
            writeln!(
                f,
                "    … and {more} more {}",
                if more == 1 { "path" } else { "paths" }
            )?;
        }
    }
    if layer.packages.len() > PACKAGES_SHOWN {
        let more = layer.packages.len() - PACKAGES_SHOWN;
        let packages = if more == 1 { "package" } else { "packages" };
        writeln!(
            f,
            "  … and {more} more {packages} (--json lists every path)"
        )?;
    }
    Ok(())
}

fn path_line(path: &PathDiff) -> String {
    let (x, y) = match (&path.image, &path.rebuild) {
        (Some(x), Some(y)) => (x, y),
        _ => return format!("{}: {}", path.path, path.change[0]),
    };
    let parts: Vec<String> = path
        .change
        .iter()
        .map(|c| {
            let (a, b) = match *c {
                "type" => (x.kind.to_string(), y.kind.to_string()),
                "content" => (content(x), content(y)),
                "mode" => (format!("{:04o}", x.mode), format!("{:04o}", y.mode)),
                "owner" => (
                    format!("{}:{}", x.uid, x.gid),
                    format!("{}:{}", y.uid, y.gid),
                ),
                "link target" => (
                    x.link.clone().unwrap_or_default(),
                    y.link.clone().unwrap_or_default(),
                ),
                _ => (time(x.mtime), time(y.mtime)),
            };
            format!("{c} {a} → {b}")
        })
        .collect();
    format!("{}: {}", path.path, parts.join(", "))
}

fn time(mtime: u64) -> String {
    crate::image::rfc3339(mtime).unwrap_or_else(|_| mtime.to_string())
}

fn content(info: &PathInfo) -> String {
    match &info.sha256 {
        Some(sha) => format!("{} ({} bytes)", &sha[..sha.len().min(19)], info.size),
        None => info.kind.to_string(),
    }
}

fn field_line(field: &FieldDiff) -> String {
    let show = |v: &Option<Value>| match v {
        Some(v) => v.to_string(),
        None => "(none)".into(),
    };
    format!(
        "{}: {} in the image, {} in the rebuild",
        field.field,
        show(&field.image),
        show(&field.rebuild)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn layers_pair_along_their_history() {
        let same = align(&names(&["a", "b"]), &names(&["a", "c"]));
        assert_eq!(same, vec![(Some(0), Some(0)), (Some(1), Some(1))]);
        let extra = align(
            &names(&["base", "deps", "code"]),
            &names(&["base", "deb", "deps", "code"]),
        );
        assert_eq!(
            extra,
            vec![
                (Some(0), Some(0)),
                (None, Some(1)),
                (Some(1), Some(2)),
                (Some(2), Some(3))
            ]
        );
        let fewer = align(&names(&["base", "x", "code"]), &names(&["base", "code"]));
        assert_eq!(
            fewer,
            vec![(Some(0), Some(0)), (Some(1), None), (Some(2), Some(1))]
        );
    }

    #[test]
    fn config_fields_by_variable_label_and_history_entry() {
        let a = json!({"created": "1", "config": {"Env": ["A=1", "B=2"], "Labels": {"x": "1"}, "Cmd": ["a"]},
            "history": [{"created_by": "base"}], "rootfs": {"diff_ids": ["sha256:1"]}});
        let b = json!({"created": "2", "config": {"Env": ["A=1", "B=3"], "Labels": {"x": "1", "y": "2"}, "Cmd": ["b"]},
            "history": [{"created_by": "other"}], "rootfs": {"diff_ids": ["sha256:2"]}});
        let diffs: Vec<String> = config_fields(&a, &b)
            .iter()
            .map(|d| d.field.clone())
            .collect();
        assert_eq!(
            diffs,
            [
                "config.Cmd",
                "config.Env.B",
                "config.Labels.y",
                "created",
                "history.[0].created_by"
            ]
        );
        assert_eq!(layer_names(&a), ["base"]);
    }

    #[test]
    fn paths_group_by_package_with_both_versions() {
        let info = |sha: &str| PathInfo {
            kind: "file",
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            sha256: Some(sha.into()),
            link: None,
            mtime: 0,
        };
        let record = |v: &str| {
            let tar = {
                let mut builder = tar::Builder::new(Vec::new());
                let text = format!("pkg/__init__.py,,\npkg-{v}.dist-info/RECORD,,\n");
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                builder
                    .append_data(
                        &mut header,
                        format!("sp/pkg-{v}.dist-info/RECORD"),
                        text.as_bytes(),
                    )
                    .unwrap();
                builder.into_inner().unwrap()
            };
            let mut listing = super::super::listing::read_tar(&tar[..]).unwrap();
            listing.paths.insert("sp/pkg/__init__.py".into(), info(v));
            listing.paths.insert("experiment/x.py".into(), info(v));
            listing
        };
        let (a, b) = (record("1.0"), record("2.0"));
        let mut owners = (Owners::default(), Owners::default());
        owners.0.add(&a);
        owners.1.add(&b);
        let groups = path_diffs(&a, &b, &owners);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].name.as_deref(), Some("pkg"));
        assert_eq!(groups[0].image_version.as_deref(), Some("1.0"));
        assert_eq!(groups[0].rebuild_version.as_deref(), Some("2.0"));
        assert_eq!(groups[0].paths.len(), 3);
        assert_eq!(groups[1].kind, "none");
        assert_eq!(groups[1].paths[0].change, ["content"]);
    }
}
