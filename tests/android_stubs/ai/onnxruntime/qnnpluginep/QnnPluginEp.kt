// Compile-time stand-in for the Kotlin helper of Qualcomm's onnxruntime-android-qnn AAR that HtpBackend calls.
// That AAR is not served by the registry this project's CI reaches, so android_app/app/compile-check.sh compiles the
// app against this declaration: it checks the app's call site (name, no arguments, a String result) as written
// here, NOT against the real AAR. Never packaged into the app; calling it fails.
@file:JvmName("QnnPluginEp")

package ai.onnxruntime.qnnpluginep

/** The absolute path of libonnxruntime_providers_qnn.so inside the app, for OrtEnvironment.registerExecutionProviderLibrary. */
fun getLibraryPath(): String = throw UnsupportedOperationException("compile-check stand-in for onnxruntime-android-qnn")
