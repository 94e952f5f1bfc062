//! The Weft control plane: the mesh CA and Certify API, discovery and the Watch
//! push API, the injector webhook. It grows one issue at a time; see the README
//! for what is built so far.
