// Package e2e holds gopasst's end-to-end tests: they build gopasst and
// udptool, run gopasst inside a throwaway sandbox host (package sandbox)
// and send real datagrams through real namespaces and tap devices,
// asserting on what arrives. They need root; without it they are skipped.
package e2e
