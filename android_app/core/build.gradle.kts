// Plain Kotlin/JVM, no Android dependency: the protocol, the sampler, the tokenizers, the benchmark engine and the
// ONNX Runtime session code (OrtBackend, over the ONNX Runtime Java API).
// `./gradlew :core:check` runs the same test program as core/build-and-test.sh (which CI uses, without Gradle).
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
        allWarningsAsErrors.set(true)
    }
}

dependencies {
    // The ONNX Runtime Java API OrtBackend is written against. On the phone the app's onnxruntime-android provides
    // the same `ai.onnxruntime` classes; on the host (tests, HostEngine) the desktop package with its natives.
    // Version: `onnxruntime-jvm` in the matrix (fraqat_deploy/device/app_versions.toml), as build-and-test.sh.
    compileOnly(libs.onnxruntime.jvm)
    testImplementation(libs.onnxruntime.jvm)
}

// the host entry point (dev.fraqat.deploy.host.HostEngine) runs the core on the HTP simulator: not part of the app
kotlin.sourceSets["test"].kotlin.srcDir("src/host/kotlin")

val coreTests by tasks.registering(JavaExec::class) {
    description = "Runs the core's tests against the repository's golden protocol files."
    group = "verification"
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("dev.fraqat.deploy.core.test.RunnerKt")
    args("--repo", rootDir.resolve("..").absolutePath)
}

// The tests are a plain program (no JUnit offline), so Gradle's own test task has nothing to discover.
tasks.named("test") { enabled = false }
tasks.named("check") { dependsOn(coreTests) }
