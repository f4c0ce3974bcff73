#[cfg(test)]
mod tests {
    #[test]
    fn scratch_dump() {
        use crate::ServedResource;
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
        for (n, s) in [
            ("pod", ServedResource::of::<Pod>().schema),
            ("deploy", ServedResource::of::<Deployment>().schema),
            ("svc", ServedResource::of::<Service>().schema),
            ("cm", ServedResource::of::<ConfigMap>().schema),
        ] {
            std::fs::write(
                format!("/tmp/schema_{n}.json"),
                serde_json::to_string_pretty(&s).unwrap(),
            )
            .unwrap();
        }
    }
}
