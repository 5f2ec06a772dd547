// The Android layer: BenchmarkActivity (driven by `fraqat-deploy bench`), the demo screen, ONNX Runtime sessions on
// the QNN HTP. Everything else is in :core. The repository's CI cannot build the APK (no Android SDK there); it
// compiles these sources against the Android API 35 classes instead (compile-check.sh, see README.md).
plugins {
    alias(libs.plugins.android.application)
}

android {
    namespace = "dev.fraqat.deploy"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.fraqat.deploy"
        minSdk = 31
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        // the QNN runtime ships arm64 libraries only
        ndk { abiFilters += "arm64-v8a" }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    packaging {
        // Extract the .so files to nativeLibraryDir: the HTP loads its skel libraries by path from there, and the
        // app reads the QNN build id from libQnnSystem.so to report it.
        jniLibs { useLegacyPackaging = true }
    }
}

fun pinned(property: String, catalog: Provider<String>): String = providers.gradleProperty(property).orElse(catalog).get()

dependencies {
    implementation(project(":core"))
    // versions: fraqat_deploy/device/app_versions.toml (flat aliases: each accessor is a Provider<String>)
    implementation("com.microsoft.onnxruntime:onnxruntime-android:${pinned("onnxruntimeVersion", libs.versions.onnxruntime.android)}")
    implementation("com.qualcomm.qti:onnxruntime-android-qnn:${pinned("qnnEpVersion", libs.versions.qnn.ep)}")
    implementation("com.qualcomm.qti:qnn-runtime:${pinned("qnnRuntimeVersion", libs.versions.qnn.runtime)}")
    // the JVM tests (src/test/kotlin, JUnit): android.jar's org.json is a stub there, so the real one is added
    testImplementation(libs.org.json)
    testImplementation(platform(libs.junit.bom))
    testImplementation("org.junit.jupiter:junit-jupiter")
    testRuntimeOnly("org.junit.platform:junit-platform-launcher")
}

tasks.withType<Test>().configureEach {
    useJUnitPlatform()
    systemProperty("fraqat.repo", rootDir.resolve("..").absolutePath)
}

/** The protocol's JSON Schemas and the built-in models' tokenizers, copied from the repository into the app's assets. */
abstract class ProtocolAssets : DefaultTask() {
    @get:InputDirectory
    abstract val schemas: DirectoryProperty

    @get:InputFile
    abstract val captionTokenizer: RegularFileProperty

    @get:InputFile
    abstract val byteTokenizer: RegularFileProperty

    @get:OutputDirectory
    abstract val output: DirectoryProperty

    @TaskAction
    fun copy() {
        val out = output.get().asFile
        out.deleteRecursively()
        schemas.get().asFile.listFiles { f -> f.name.endsWith(".schema.json") }!!.forEach {
            it.copyTo(out.resolve("schemas/${it.name}"), overwrite = true)
        }
        // named after the model names the CLI writes into request.json (model.name)
        captionTokenizer.get().asFile.copyTo(out.resolve("tokenizers/digits.json"), overwrite = true)
        byteTokenizer.get().asFile.copyTo(out.resolve("tokenizers/tiny-gemma.json"), overwrite = true)
    }
}

val repository: File = rootDir.resolve("..")
val protocolAssets = tasks.register<ProtocolAssets>("protocolAssets") {
    schemas.set(repository.resolve("fraqat_deploy/device/schemas"))
    captionTokenizer.set(repository.resolve("fraqat_deploy/assets/digits-sana/tokenizer/tokenizer.json"))
    byteTokenizer.set(repository.resolve("fraqat_deploy/assets/tiny-gemma/tokenizer.json"))
}

androidComponents {
    onVariants { variant ->
        variant.sources.assets?.addGeneratedSourceDirectory(protocolAssets, ProtocolAssets::output)
    }
}
