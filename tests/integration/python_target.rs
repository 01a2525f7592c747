//! The target Python is read from the base image, never from the host.

use crate::common;

use dallinger_oci::base::{self, BaseRef};
use dallinger_oci::image::store::BlobStore;
use dallinger_oci::python::target::detect;
use dallinger_oci::python::TargetOverrides;

#[test]
fn bookworm_base_gives_its_own_python() {
    // The shared layout made from the mmdebstrap rootfs: same layers, no
    // second compression of 200 MB.
    let base_ref = BaseRef::parse(&common::python_base_layout()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let base = base::resolve(&base_ref, &store, "linux/amd64", 946_684_800).unwrap();
    let target = detect(
        &store,
        &base.layers,
        &base.config,
        &TargetOverrides::default(),
    )
    .unwrap();
    // bookworm's python3 is 3.11.2 and its glibc 2.36, whatever the host has.
    assert_eq!(target.python_version, (3, 11, 2));
    assert_eq!(target.glibc, Some((2, 36)));
    assert_eq!(target.interpreter, "/usr/bin/python3");
    assert_eq!(target.purelib, "usr/local/lib/python3.11/dist-packages");
    assert_eq!(target.scripts, "usr/local/bin");
    assert_eq!(target.arch, "x86_64");
    // Read once, then remembered: a second detection does not scan layers.
    let again = detect(
        &store,
        &base.layers,
        &base.config,
        &TargetOverrides::default(),
    )
    .unwrap();
    assert_eq!(again, target);
    let overridden = detect(
        &store,
        &base.layers,
        &base.config,
        &TargetOverrides {
            python_version: Some((3, 11, 9)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(overridden.python_version, (3, 11, 9));
}
