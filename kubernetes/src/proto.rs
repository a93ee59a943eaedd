//! Generated gRPC code for our own `.proto` files (see `proto/`).
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod dra_v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

pub mod dra_v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}

pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

pub mod deviceplugin {
    tonic::include_proto!("v1beta1");
}

pub mod podresources {
    tonic::include_proto!("v1");
}
