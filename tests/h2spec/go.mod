// h2spec for the tests (HTTP/2 conformance, tests/tests/h2spec.rs), built by
// scripts/h2spec-tool. The newest h2spec release the Go module proxy serves
// here is v2.2.1 (v2.3.0 and later declare go.mod without a /v2 suffix, so
// they have no module version); its dependencies are pinned here, since the
// v2.2.1 module has no go.mod of its own to pin them.
module weft.dev/h2spec

go 1.24.6

require github.com/summerwind/h2spec v2.2.1+incompatible

require (
	github.com/fatih/color v1.18.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/spf13/cobra v1.10.1 // indirect
	github.com/spf13/pflag v1.0.10 // indirect
	golang.org/x/net v0.47.0 // indirect
	golang.org/x/sys v0.38.0 // indirect
	golang.org/x/text v0.31.0 // indirect
)
