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
# shellcheck source=../jvm-tools.sh
source "$here/../jvm-tools.sh"
KOTLIN_VERSION="$(matrix_version kotlin)"
ORT_JAVA_VERSION="$(matrix_version onnxruntime-jvm)"
[[ -n "$KOTLIN_VERSION" && -n "$ORT_JAVA_VERSION" ]] || { echo "$matrix lacks kotlin / onnxruntime-jvm versions" >&2; exit 2; }
build="$here/build/jvm"
jar="$build/core-tests.jar"
ensure_kotlinc "$KOTLIN_VERSION"
ort_jar="$(maven_jar com.microsoft.onnxruntime onnxruntime "$ORT_JAVA_VERSION")"

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
