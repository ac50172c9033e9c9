package testutil

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	metadatafake "k8s.io/client-go/metadata/fake"
)

// CRDResource is the CustomResourceDefinition resource.
var CRDResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// CRDMetadata is the metadata of the CRD name (plural.group), as a
// metadata client lists it.
func CRDMetadata(name string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}
}

// FakeMetadata is a fake metadata client holding objs.
func FakeMetadata(objs ...runtime.Object) *metadatafake.FakeMetadataClient {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		panic(err)
	}
	return metadatafake.NewSimpleMetadataClient(scheme, objs...)
}

// InstallCRD adds the CRD name to c, as installing it does for its watchers.
func InstallCRD(t testing.TB, c *metadatafake.FakeMetadataClient, name string) {
	t.Helper()
	if _, err := c.Resource(CRDResource).(metadatafake.MetadataClient).CreateFake(CRDMetadata(name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
