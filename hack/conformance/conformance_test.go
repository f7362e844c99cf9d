// Package conformance runs the upstream Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance, the version go.mod pins, which matches the CRDs vendored
// in crds/ and the chart) against Portico.
//
// hack/conformance.sh builds this package with `go test -c` and runs the binary inside the dev
// cluster's network namespace, where the Gateways' addresses (ClusterIPs of the gateway proxy
// Services) are routed by kube-proxy; see docs/conformance/README.md. Every option of the
// suite's own flags (-gateway-class, -supported-features, -run-test, -report-output,
// -timeout-config-overrides, ...) still works and wins over the defaults below, so a run can be
// narrowed or widened from the command line (CONFORMANCE_ARGS) without editing this file.
package conformance

import (
	"flag"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
)

// gatewayClassName is the GatewayClass the chart creates with
// `--set gatewayAPI.gatewayClass.create=true` (controllerName portico.dev/gateway-controller).
const gatewayClassName = "portico"

// profiles are the conformance profiles Portico reports on.
var profiles = []suite.ConformanceProfileName{
	suite.GatewayHTTPConformanceProfileName,
	suite.GatewayGRPCConformanceProfileName,
}

// TestPortico runs the suite with Portico's defaults for every option not set by a flag.
//
// The features tested are the ones the GatewayClass publishes in status.supportedFeatures (the
// operator's list, index/gateway_api.rs SUPPORTED_FEATURES), so the report and what a user's
// cluster says can never disagree; a claimed feature that fails shows as a failure.
//
// Environment (set by hack/conformance.sh): PORTICO_VERSION (the chart's appVersion, for the
// report), CONFORMANCE_FEATURES (a comma-separated list: exactly those instead, e.g. to try a
// feature before the operator claims it).
func TestPortico(t *testing.T) {
	opts := conformance.DefaultOptions(t)

	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if !set["gateway-class"] {
		opts.GatewayClassName = gatewayClassName
	}
	if !set["conformance-profiles"] {
		opts.ConformanceProfiles = profiles
	}
	if !set["supported-features"] && !set["exempt-features"] && !set["all-features"] {
		if v := os.Getenv("CONFORMANCE_FEATURES"); v != "" && v != "inferred" {
			opts.SupportedFeatures = suite.ParseSupportedFeaturesSlice(v)
		} else {
			// Left empty, the suite reads GatewayClass status.supportedFeatures.
			opts.SupportedFeatures = nil
		}
	}

	// The report's header; a report without all five fields is refused by the suite.
	impl := &opts.Implementation
	if impl.Organization == "" {
		impl.Organization = "portico-dev"
	}
	if impl.Project == "" {
		impl.Project = "portico"
	}
	if impl.URL == "" {
		impl.URL = "https://github.com/portico-dev/portico"
	}
	if impl.Version == "" {
		impl.Version = os.Getenv("PORTICO_VERSION")
	}
	if len(impl.Contact) == 0 {
		impl.Contact = []string{"https://github.com/portico-dev/portico/issues"}
	}
	if impl.Version != "" && !strings.HasPrefix(impl.Version, "v") {
		impl.Version = "v" + impl.Version
	}

	conformance.RunConformanceWithOptions(t, opts)
}
