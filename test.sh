#!/usr/bin/env bash
# Runs every check gopasst has: formatting, go vet, staticcheck, and the
# test suite with the race detector. The end-to-end tests need root (they
# create network namespaces, tap devices and a test user); as non-root
# they are skipped.
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
