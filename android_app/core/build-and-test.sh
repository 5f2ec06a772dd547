#!/usr/bin/env bash
# Compile the app's plain-Kotlin core, its host entry point and its tests with kotlinc (one invocation) and run the
# tests on the JVM.
#
#   android_app/core/build-and-test.sh [--out DIR] [--only NAME]   compile if needed, run the tests
#   android_app/core/build-and-test.sh --classpath                 compile if needed, print the runtime classpath
#
# Versions come from the app's version matrix, fraqat_deploy/device/app_versions.toml (`kotlin`, `onnxruntime-jvm`).
# The Kotlin compiler comes from the npm registry (package kotlin-compiler) and is installed once into
# $FRAQAT_KOTLIN_HOME (default ~/.cache/fraqat-kotlin). The desktop ONNX Runtime Java package
# (com.microsoft.onnxruntime:onnxruntime: the newest on Maven Central, whose plugin-EP API the
# onnxruntime-qnn 2.7.0 QNN plugin accepts) comes from Maven Central with `mvn dependency:get`, once, into ~/.m2.
# Needs a JDK (17+) and, for the first run, npm and mvn.
# Exits non-zero when a tool cannot be installed, the code does not compile, or any test fails.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
matrix="$repo/fraqat_deploy/device/app_versions.toml"
version() {  # a [versions] entry of the matrix
    sed -n "s/^$1 *= *\"\([^\"]*\)\".*/\1/p" "$matrix" | head -n1
}
KOTLIN_VERSION="$(version kotlin)"
ORT_JAVA_VERSION="$(version onnxruntime-jvm)"
[[ -n "$KOTLIN_VERSION" && -n "$ORT_JAVA_VERSION" ]] || { echo "$matrix lacks kotlin / onnxruntime-jvm versions" >&2; exit 2; }
cache="${FRAQAT_KOTLIN_HOME:-$HOME/.cache/fraqat-kotlin}"
kotlinc="$cache/node_modules/kotlin-compiler/bin/kotlinc"
build="$here/build/jvm"
jar="$build/core-tests.jar"

command -v java >/dev/null || { echo "java not found: install a JDK (17 or newer)" >&2; exit 2; }

installed_version() {
    sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$cache/node_modules/kotlin-compiler/package.json" 2>/dev/null | head -n1
}
if [[ ! -x "$kotlinc" || "$(installed_version)" != "$KOTLIN_VERSION" ]]; then
    command -v npm >/dev/null || { echo "npm not found: it installs the Kotlin compiler (kotlin-compiler@$KOTLIN_VERSION)" >&2; exit 2; }
    echo "installing kotlin-compiler@$KOTLIN_VERSION into $cache" >&2
    mkdir -p "$cache"
    npm install --prefix "$cache" --no-audit --no-fund --loglevel=error "kotlin-compiler@$KOTLIN_VERSION" >&2
fi

m2="${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}"
ort_jar="$m2/com/microsoft/onnxruntime/onnxruntime/$ORT_JAVA_VERSION/onnxruntime-$ORT_JAVA_VERSION.jar"
if [[ ! -f "$ort_jar" ]]; then
    command -v mvn >/dev/null || { echo "mvn not found: it fetches com.microsoft.onnxruntime:onnxruntime:$ORT_JAVA_VERSION from Maven Central" >&2; exit 2; }
    echo "fetching com.microsoft.onnxruntime:onnxruntime:$ORT_JAVA_VERSION from Maven Central" >&2
    mvn -q -B dependency:get "-Dmaven.repo.local=$m2" "-Dartifact=com.microsoft.onnxruntime:onnxruntime:$ORT_JAVA_VERSION" -Dtransitive=false >&2
    [[ -f "$ort_jar" ]] || { echo "mvn did not leave $ort_jar" >&2; exit 2; }
fi

mapfile -t sources < <(find "$here/src/main/kotlin" "$here/src/host/kotlin" "$here/src/test/kotlin" -name '*.kt' | sort)
stale=1
if [[ -f "$jar" ]]; then
    stale=0
    for f in "${sources[@]}" "$0"; do
        if [[ "$f" -nt "$jar" ]]; then stale=1; break; fi
    done
fi
if [[ $stale == 1 ]]; then
    mkdir -p "$build"
    started=$(date +%s)
    # -Werror: the compiler is pinned, so a warning is something to fix, not noise
    "$kotlinc" -jvm-target 17 -Werror -include-runtime -cp "$ort_jar" -d "$build/core-tests.part.jar" "${sources[@]}"
    mv "$build/core-tests.part.jar" "$jar"
    echo "compiled ${#sources[@]} files in $(( $(date +%s) - started )) s" >&2
else
    echo "core-tests.jar is up to date" >&2
fi
if [[ "${1:-}" == "--classpath" ]]; then
    echo "$jar:$ort_jar"
    exit 0
fi
exec java -cp "$jar:$ort_jar" dev.fraqat.deploy.core.test.RunnerKt --repo "$repo" "$@"
