//go:build race

package e2e_test

// raceBuild makes TestMain build gopasst with the race detector when the
// tests themselves run with it, so real traffic exercises both data-path
// goroutines under the detector.
const raceBuild = true
