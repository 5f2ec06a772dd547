#!/usr/bin/env bash
# Compile the app's Android layer (app/src/main/java) together with the plain-Kotlin core, with -Werror, against the
# real Android API 35 classes (Robolectric's android-all jar) and ONNX Runtime's Java API (the desktop
# com.microsoft.onnxruntime:onnxruntime jar: the same ai.onnxruntime classes as the Android AAR), so that a misspelled
# or removed Android or ONNX Runtime call fails. Optionally compile and run the app's JVM tests (app/src/test/kotlin).
#
#   android_app/app/compile-check.sh [--out DIR] [--app-src DIR] [--against CLASSES] [--test]
#
# --test also compiles app/src/test/kotlin and runs it (the JVM-testable parts of the Android layer: RunGuard,
# StartFailure, DmaBuf), keeping what it writes in DIR/test-out.
#
# --app-src DIR compiles that tree instead of app/src/main/java; with --against CLASSES (an earlier --out's classes)
# only the .kt files under DIR are compiled, against those classes (a quick re-check of a few changed files).
#
# Versions come from fraqat_deploy/device/app_versions.toml. Jars are fetched from Maven Central with
# `mvn dependency:get` into the local Maven repository (~/.m2) once; the Kotlin compiler is the npm package
# core/build-and-test.sh installs (same version, same cache). This is a compile check, not an APK build: D8 (dex) and
# aapt2 (resources, manifest) are not published on Maven Central, and neither are the ONNX Runtime Android / QNN
# AARs as this project's registry serves them: the QNN AAR's Kotlin helper is declared in
# tests/android_stubs (see android_app/README.md, "What is proven off the phone").
# Exits 0 when everything compiles (and the tests pass), 1 on a compile error or a failing test, 2 when a tool or a
# download is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
matrix="$repo/fraqat_deploy/device/app_versions.toml"
out="$here/build/compile-check"
app_src="$here/src/main/java"
run_tests=0
against=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --app-src) app_src="$2"; shift 2 ;;
        --against) against="$2"; shift 2 ;;
        --test) run_tests=1; shift ;;
        *) echo "unknown option $1 (use --out DIR, --app-src DIR, --against CLASSES, --test)" >&2; exit 2 ;;
    esac
done

version() {  # a [versions] entry of the matrix
    sed -n "s/^$1 *= *\"\([^\"]*\)\".*/\1/p" "$matrix" | head -n1
}
KOTLIN_VERSION="$(version kotlin)"
ORT_VERSION="$(version onnxruntime-jvm)"
ANDROID_ALL_VERSION="$(version android-all)"
[[ -n "$KOTLIN_VERSION" && -n "$ORT_VERSION" && -n "$ANDROID_ALL_VERSION" ]] || {
    echo "$matrix lacks kotlin / onnxruntime-jvm / android-all versions" >&2; exit 2; }

command -v java >/dev/null || { echo "java not found: install a JDK (17 or newer)" >&2; exit 2; }
m2="${FRAQAT_MAVEN_REPO:-$HOME/.m2/repository}"

maven_jar() {  # group artifact version -> path of the jar in the local repository, fetched once
    local group="$1" artifact="$2" ver="$3"
    local jar="$m2/${group//.//}/$artifact/$ver/$artifact-$ver.jar"
    if [[ ! -f "$jar" ]]; then
        command -v mvn >/dev/null || { echo "mvn not found: it fetches $group:$artifact:$ver from Maven Central" >&2; exit 2; }
        echo "fetching $group:$artifact:$ver from Maven Central" >&2
        mvn -q -B dependency:get -Dartifact="$group:$artifact:$ver" -Dtransitive=false "-Dmaven.repo.local=$m2" >&2 \
            || { echo "cannot fetch $group:$artifact:$ver from Maven Central" >&2; exit 2; }
    fi
    echo "$jar"
}
android_all="$(maven_jar org.robolectric android-all "$ANDROID_ALL_VERSION")"
ort="$(maven_jar com.microsoft.onnxruntime onnxruntime "$ORT_VERSION")"

cache="${FRAQAT_KOTLIN_HOME:-$HOME/.cache/fraqat-kotlin}"
kotlin_home="$cache/node_modules/kotlin-compiler"
kotlinc="$kotlin_home/bin/kotlinc"
installed="$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$kotlin_home/package.json" 2>/dev/null | head -n1)"
if [[ ! -x "$kotlinc" || "$installed" != "$KOTLIN_VERSION" ]]; then
    command -v npm >/dev/null || { echo "npm not found: it installs the Kotlin compiler (kotlin-compiler@$KOTLIN_VERSION)" >&2; exit 2; }
    echo "installing kotlin-compiler@$KOTLIN_VERSION into $cache" >&2
    mkdir -p "$cache"
    npm install --prefix "$cache" --no-audit --no-fund --loglevel=error "kotlin-compiler@$KOTLIN_VERSION" >&2
fi

classpath="$android_all:$ort"
if [[ -n "$against" ]]; then
    [[ -d "$against" ]] || { echo "--against $against: no such folder (run without --against first)" >&2; exit 2; }
    mapfile -t sources < <(find "$app_src" -name '*.kt' | sort)
    classpath="$against:$classpath"
else
    mapfile -t sources < <(find "$app_src" "$repo/android_app/core/src/main/kotlin" "$repo/tests/android_stubs" -name '*.kt' | sort)
fi
# the app's JVM tests compile in the same run (one compiler start), into the same classes
[[ $run_tests == 1 ]] && mapfile -t -O "${#sources[@]}" sources < <(find "$here/src/test/kotlin" -name '*.kt' | sort)
[[ ${#sources[@]} -gt 0 ]] || { echo "no Kotlin sources under $app_src" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
started=$(date +%s)
# -Werror: a deprecated Android or ONNX Runtime call is something to fix, not noise
if ! "$kotlinc" -jvm-target 17 -Werror -no-reflect -classpath "$classpath" -d "$out/classes" "${sources[@]}"; then
    echo "compile check FAILED: the Android layer does not compile against android-all $ANDROID_ALL_VERSION + onnxruntime $ORT_VERSION" >&2
    exit 1
fi
echo "compiled ${#sources[@]} files against android-all $ANDROID_ALL_VERSION (API 35) and onnxruntime $ORT_VERSION in $(( $(date +%s) - started )) s"

if [[ $run_tests == 1 ]]; then
    stdlib="$kotlin_home/lib/kotlin-stdlib.jar"
    java -cp "$out/classes:$stdlib:$android_all" dev.fraqat.deploy.test.AppTestsKt --repo "$repo" --out "$out/test-out" || exit 1
fi
