#!/usr/bin/env bash
# Runs every check gopasst has: formatting, go vet, staticcheck, the
# test suite with the race detector, and a short run of every fuzz
# target. The end-to-end tests need root (they create network namespaces,
# tap devices and a test user); as non-root they are skipped.
set -euo pipefail
cd "$(dirname "$0")"

STATICCHECK_VERSION=v0.8.2

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" $unformatted
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
if ! go run "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}" ./...; then
	echo "staticcheck failed"
	exit 1
fi

echo "== go test -race"
go test -race -count=1 -timeout 20m ./... "$@"

# Every fuzz target (func FuzzXxx in a _test.go file) runs briefly on top
# of its seed corpus. FUZZTIME sets the time per target (0 skips them);
# README.md says how to run a longer session. A failure leaves the input
# in the package's testdata/fuzz/FuzzXxx directory.
FUZZTIME=${FUZZTIME:-7s}
if [ "$FUZZTIME" != 0 ]; then
	mapfile -t targets < <(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' cmd internal | sort -u)
	echo "== fuzz: ${#targets[@]} targets, $FUZZTIME each"
	for t in "${targets[@]}"; do
		file=${t%%:*}
		name=${t##*func }
		pkg=./$(dirname "$file")
		if ! out=$(go test -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" -fuzzminimizetime=200x "$pkg" 2>&1); then
			# Go before 1.27 may end a fuzzing run that found nothing
			# with "context deadline exceeded" when a worker is busy
			# at the deadline (go.dev/issue/75804): no input is at
			# fault then, and none is written.
			if grep -q 'context deadline exceeded' <<<"$out" &&
				! grep -qE 'Failing input written|failure while testing seed corpus|panic:' <<<"$out"; then
				echo "$name ($pkg): stopped by go.dev/issue/75804, not a failure"
				continue
			fi
			echo "$out"
			echo "fuzz target $name in $pkg failed"
			exit 1
		fi
		echo "$name ($pkg): $(grep '^fuzz: elapsed' <<<"$out" | tail -n 1)"
	done
fi
