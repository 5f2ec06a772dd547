// Plain Kotlin/JVM, no Android dependency: the protocol, the sampler, the tokenizers, the benchmark engine and the
// ONNX Runtime session code (OrtBackend, over the ONNX Runtime Java API).
// `./gradlew :core:test` runs the same JUnit tests as core/build-and-test.sh (which CI uses, without Gradle).
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
    // org.json: Android's framework has it (the app must not bundle a second copy), the JVM takes it from Maven Central
    compileOnly(libs.org.json)
    testImplementation(libs.org.json)
    testImplementation(platform(libs.junit.bom))
    testImplementation("org.junit.jupiter:junit-jupiter")
    testRuntimeOnly("org.junit.platform:junit-platform-launcher")
}

// the host entry point (dev.fraqat.deploy.host.HostEngine) runs the core on the HTP simulator: not part of the app
kotlin.sourceSets["test"].kotlin.srcDir("src/host/kotlin")

tasks.test {
    useJUnitPlatform()
    systemProperty("fraqat.repo", rootDir.resolve("..").absolutePath)
}
