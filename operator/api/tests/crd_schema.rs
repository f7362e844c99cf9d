//! Properties of the generated CRDs that users rely on (the apiserver tests cover behaviour).

use portico_api::crds;

#[test]
fn every_crd_has_status_printer_columns_short_names_and_the_portico_category() {
    for crd in crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(crd.spec.group, "portico.dev", "{name}");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["portico".to_string()][..]),
            "{name}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{name}"
        );
    }
}

#[test]
fn schemas_carry_descriptions_and_cel_rules() {
    for crd in crds::all() {
        let text = crds::render(&crd).expect("render");
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert!(
            text.contains("x-kubernetes-validations"),
            "{name} has no CEL rules"
        );
        assert!(
            text.matches("description:").count() > 20,
            "{name} lacks field docs"
        );
    }
}

#[test]
fn committed_manifests_match_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["crds", "charts/portico/crds"] {
        for crd in crds::all() {
            let path = root.join(dir).join(crds::file_name(&crd));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == crds::render(&crd).expect("render"),
                "{} is stale: run `make crds`",
                path.display()
            );
        }
    }
}

#[test]
fn no_property_name_reads_as_a_boolean_in_yaml_1_1() {
    // kubectl and helm parse YAML 1.1, where a bare `on:` or `no:` key is a boolean: a field of
    // that name would silently vanish from the installed schema.
    let booleans = ["y", "n", "yes", "no", "on", "off", "true", "false"];
    for crd in crds::all() {
        let text = crds::render(&crd).expect("render");
        for line in text.lines() {
            let key = line
                .trim_start()
                .trim_start_matches("- ")
                .split(':')
                .next()
                .unwrap_or("");
            assert!(
                !booleans.contains(&key.to_ascii_lowercase().as_str()) || !line.contains(':'),
                "{}: property {key:?} reads as a boolean in YAML 1.1",
                crd.metadata.name.clone().unwrap_or_default()
            );
        }
    }
}
