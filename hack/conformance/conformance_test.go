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

	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

// gatewayClassName is the GatewayClass the chart creates with
// `--set gatewayAPI.gatewayClass.create=true` (controllerName portico.dev/gateway-controller).
const gatewayClassName = "portico"

// profiles are the conformance profiles Portico reports on. GATEWAY-GRPC joins once GRPCRoute
// is served.
var profiles = []suite.ConformanceProfileName{suite.GatewayHTTPConformanceProfileName}

// extendedFeatures are the GATEWAY-HTTP features beyond core that Portico claims: the ones its
// proxy implements (DESIGN.md: matches on method and query, header filters on both sides,
// redirects, rewrites, mirrors, timeouts, WebSocket and h2c upstreams, any listener
// port; not the CORS filter, which the translation reports as unsupported). The profile's core features (Gateway, HTTPRoute, ReferenceGrant) are implied. A claimed
// feature whose translation is missing fails its tests rather than being skipped: trim this list
// to what the controller translates, or let the suite read the GatewayClass's
// status.supportedFeatures (CONFORMANCE_FEATURES=inferred).
var extendedFeatures = []features.FeatureName{
	features.SupportGatewayPort8080,
	features.SupportHTTPRouteQueryParamMatching,
	features.SupportHTTPRouteMethodMatching,
	features.SupportHTTPRouteResponseHeaderModification,
	features.SupportHTTPRoutePortRedirect,
	features.SupportHTTPRouteSchemeRedirect,
	features.SupportHTTPRoutePathRedirect,
	features.SupportHTTPRoute303RedirectStatusCode,
	features.SupportHTTPRoute307RedirectStatusCode,
	features.SupportHTTPRoute308RedirectStatusCode,
	features.SupportHTTPRouteHostRewrite,
	features.SupportHTTPRoutePathRewrite,
	features.SupportHTTPRouteRequestMirror,
	features.SupportHTTPRouteRequestMultipleMirrors,
	features.SupportHTTPRouteRequestTimeout,
	features.SupportHTTPRouteBackendTimeout,
	features.SupportHTTPRouteBackendProtocolH2C,
	features.SupportHTTPRouteBackendProtocolWebSocket,
}

// TestPortico runs the suite with Portico's defaults for every option not set by a flag.
//
// Environment (set by hack/conformance.sh): PORTICO_VERSION (the chart's appVersion, for the
// report), CONFORMANCE_FEATURES ("inferred": take the features from the GatewayClass's status
// instead of extendedFeatures; a comma-separated list: exactly those).
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
		switch v := os.Getenv("CONFORMANCE_FEATURES"); v {
		case "inferred":
			// Left empty, the suite reads GatewayClass status.supportedFeatures (only when no
			// single test is selected: -run-test turns inference off).
			opts.SupportedFeatures = nil
		case "":
			opts.SupportedFeatures = sets.List(sets.New(extendedFeatures...))
		default:
			opts.SupportedFeatures = suite.ParseSupportedFeaturesSlice(v)
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
