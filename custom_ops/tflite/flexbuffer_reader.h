// A small, bounds-checked reader for the FlexBuffer maps the TFLite converter writes as a
// custom op's custom_options (one entry per TF op attribute).
//
// Format (FlexBuffers, little endian): the root sits at the end of the buffer: the last byte is
// the root's byte width, the byte before it its packed type (type << 2 | log2(child width)).
// Scalars (int, uint, float, bool, null) are stored inline in their parent's width; everything
// else is an unsigned offset counted backwards from where it is stored. A map stores, just below
// its values: the offset to its sorted keys vector, that vector's byte width and its length;
// values are followed by one packed type byte each. Strings and keys are NUL-terminated.
//
// Contract: every read is checked against [data, data + size); malformed, truncated or
// adversarial input yields an error string, never a read outside the buffer. The reader keeps
// no pointer to the buffer after parse() returns (values are copied out). Supported value types:
// int/uint/bool (also indirect), float (also indirect), string/key, and vectors (typed, fixed
// typed 2-4 and untyped) of ints/uints/bools/floats; anything else is kept as "unsupported" and
// only an error when the caller asks for that key. Thread-safe: no shared state.
#ifndef KERAS_XNOR_TFLITE_FLEXBUFFER_READER_H_
#define KERAS_XNOR_TFLITE_FLEXBUFFER_READER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace keras_xnor {

class FlexMap {
 public:
  // Kind of a stored value, after decoding.
  enum class Kind { kInt, kFloat, kString, kIntVector, kFloatVector, kNull, kUnsupported };

  struct Value {
    Kind kind = Kind::kNull;
    std::int64_t int_value = 0;  // kInt (bools are 0/1; uints that fit)
    double float_value = 0;      // kFloat
    std::string string_value;    // kString
    std::vector<std::int64_t> ints;
    std::vector<double> floats;
    std::string type_name;  // FlexBuffer type as text, for error messages
  };

  // Parses `size` bytes as a FlexBuffer whose root is a map. Returns "" on success, else a
  // message ("truncated ...", "offset out of bounds ...", "root is not a map ...").
  std::string parse(const std::uint8_t* data, std::size_t size);

  bool has(const std::string& key) const { return values_.count(key) != 0; }
  const std::map<std::string, Value>& values() const { return values_; }

  // Typed getters: return "" and set *out when `key` exists with a compatible kind; otherwise
  // a message naming the key and what was found. Ints convert to float, not the reverse.
  std::string get_int(const std::string& key, std::int64_t* out) const;
  std::string get_bool(const std::string& key, bool* out) const;
  std::string get_string(const std::string& key, std::string* out) const;
  std::string get_int_vector(const std::string& key, std::vector<std::int64_t>* out) const;

  // Human-readable dump ({"key": value, ...}), used by tests and error messages.
  std::string to_string() const;

 private:
  std::map<std::string, Value> values_;
};

}  // namespace keras_xnor

#endif  // KERAS_XNOR_TFLITE_FLEXBUFFER_READER_H_
