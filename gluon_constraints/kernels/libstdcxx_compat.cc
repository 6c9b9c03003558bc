// The one libstdc++ function newer than GCC 5 that the library would need.
//
// GCC 11 and later headers call std::__throw_bad_array_new_length (libstdc++'s GLIBCXX_3.4.29)
// when a container is asked for more elements than it can hold. Defined here, with the same
// behaviour, the library binds to its own copy (it exports only the C entry points of
// exports.map), needs nothing newer than GLIBCXX_3.4.21, and a wheel carrying it installs on
// manylinux_2_24 systems. Older GCC headers never call it, and the definition is then unused.
#include <new>

namespace std {
[[noreturn]] void __throw_bad_array_new_length() { throw bad_array_new_length(); }
}  // namespace std
