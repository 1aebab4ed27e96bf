"""What front ends call: one way to build a request from user input (model defaults, model
controls, seed policy) and one way to inspect a finished picture. The CLI and the app share it."""
