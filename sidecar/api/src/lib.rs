//! The operator→proxy contract: versioned serde types shared by the operator and the proxy.
