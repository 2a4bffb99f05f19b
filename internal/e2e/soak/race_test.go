//go:build race

package main

// raceBuild makes TestSoakShort build gopasst with the race detector when
// the test itself runs with it.
const raceBuild = true
